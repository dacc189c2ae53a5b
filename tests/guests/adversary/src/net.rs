//! A TCP connect through `wasi:sockets`, for the `net` mode.
//!
//! `std::net::TcpStream` would be the obvious choice, but the std of Debian's
//! toolchain links a wasi-libc that predates sockets (`connect` and
//! `getaddrinfo` are undefined at link time), so this calls the WASI 0.2
//! socket interfaces directly; the host sees the same imports either way.

use std::net::{IpAddr, SocketAddr};

use wasip2::sockets::instance_network::instance_network;
use wasip2::sockets::ip_name_lookup::resolve_addresses;
use wasip2::sockets::network::{
    ErrorCode, IpAddress, IpAddressFamily, IpSocketAddress, Ipv4SocketAddress, Ipv6SocketAddress, Network,
};
use wasip2::sockets::tcp_create_socket::create_tcp_socket;

/// Connects to `addr` (`ip:port` or `host:port`) and closes the connection.
pub fn connect(addr: &str) -> Result<(), String> {
    let network = instance_network();
    let target = resolve(&network, addr)?;
    let family = match target {
        SocketAddr::V4(_) => IpAddressFamily::Ipv4,
        SocketAddr::V6(_) => IpAddressFamily::Ipv6,
    };
    let socket = create_tcp_socket(family).map_err(describe)?;
    socket.start_connect(&network, to_wasi(target)).map_err(describe)?;
    loop {
        match socket.finish_connect() {
            Err(ErrorCode::WouldBlock) => socket.subscribe().block(),
            result => return result.map(drop).map_err(describe),
        }
    }
}

/// The first address of `addr`, resolving a host name through the host.
fn resolve(network: &Network, addr: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = addr.parse() {
        return Ok(addr);
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("{addr}: expected host:port"))?;
    let port: u16 = port.parse().map_err(|err| format!("{addr}: bad port: {err}"))?;
    let addresses = resolve_addresses(network, host).map_err(describe)?;
    loop {
        match addresses.resolve_next_address() {
            Ok(Some(ip)) => return Ok(SocketAddr::new(from_wasi(ip), port)),
            Ok(None) => return Err(format!("{host}: no address")),
            Err(ErrorCode::WouldBlock) => addresses.subscribe().block(),
            Err(code) => return Err(describe(code)),
        }
    }
}

/// `access-denied: Access denied.`: the code and the first line of its documentation.
fn describe(code: ErrorCode) -> String {
    let summary = code.message().lines().next().unwrap_or_default();
    format!("{}: {summary}", code.name())
}

fn from_wasi(ip: IpAddress) -> IpAddr {
    match ip {
        IpAddress::Ipv4((a, b, c, d)) => IpAddr::from([a, b, c, d]),
        IpAddress::Ipv6((a, b, c, d, e, f, g, h)) => IpAddr::from([a, b, c, d, e, f, g, h]),
    }
}

fn to_wasi(addr: SocketAddr) -> IpSocketAddress {
    match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            IpSocketAddress::Ipv4(Ipv4SocketAddress {
                port: v4.port(),
                address: (a, b, c, d),
            })
        }
        SocketAddr::V6(v6) => {
            let [a, b, c, d, e, f, g, h] = v6.ip().segments();
            IpSocketAddress::Ipv6(Ipv6SocketAddress {
                port: v6.port(),
                flow_info: v6.flowinfo(),
                address: (a, b, c, d, e, f, g, h),
                scope_id: v6.scope_id(),
            })
        }
    }
}
