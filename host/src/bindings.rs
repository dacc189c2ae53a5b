//! Host-side bindings generated from `wit/wink.wit`.
//!
//! The generated request and response types double as the host's own model
//! and tool types: they are plain Rust data, and using them end to end means
//! no conversion layer between the guest boundary and the providers.

#![allow(missing_docs)]

/// Bindings for the `agent` world.
pub mod agent {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wink:agent/agent",
        imports: { default: async | trappable },
        exports: { default: async },
    });
}

/// Bindings for the `tool` world, sharing the agent world's types and log.
pub mod tool {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "wink:agent/tool",
        imports: { default: async | trappable },
        exports: { default: async },
        with: {
            "wink:agent/types": super::agent::wink::agent::types,
            "wink:agent/log": super::agent::wink::agent::log,
        },
    });
}

pub use agent::wink::agent::{job, log, model, session, tools, types};
