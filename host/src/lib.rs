//! wink-host runs AI agents, and the tools they call, as WebAssembly (WASI
//! 0.2) components.
//!
//! The host owns everything dangerous or costly: model calls and their
//! credentials, budgets, tool sandboxes, durable state and telemetry. The
//! guest owns only the agent's logic, and sees only what its sandbox grants.
//!
//! Data flows one way: a job enters the [`runtime`], which instantiates the
//! agent in a [`sandbox`] and serves its imports from the [`model`],
//! [`tools`] and [`session`] modules, and produces a [`job::JobReport`].

pub mod allocator;
pub mod bindings;
pub mod cli;
pub mod config;
pub mod job;
pub mod mailbox;
pub mod model;
pub mod policy;
pub mod runtime;
pub mod sandbox;
pub mod session;
pub mod telemetry;
pub mod tools;
pub mod worker;
