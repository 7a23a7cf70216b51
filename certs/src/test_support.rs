//! Test helpers: a small cluster of certificates and an in-memory handshake.

use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

use crate::{peer_client_config, peer_server_config, ClusterCa, NodeCert};

/// A CA and certificates for nodes 1, 2 and 3 (each with SAN 127.0.0.1).
pub(crate) struct Cluster {
    pub ca: ClusterCa,
    pub nodes: Vec<NodeCert>,
}

impl Cluster {
    pub fn new() -> Self {
        let ca = ClusterCa::generate("test").unwrap();
        let nodes = (1..=3)
            .map(|id| ca.issue_node_cert(id, &["127.0.0.1".to_string()]).unwrap())
            .collect();
        Self { ca, nodes }
    }

    fn node(&self, id: u64) -> &NodeCert {
        &self.nodes[usize::try_from(id - 1).unwrap()]
    }

    pub fn peer_server(&self, id: u64) -> Arc<ServerConfig> {
        let n = self.node(id);
        peer_server_config(self.ca.cert_pem(), &n.cert_pem, &n.key_pem).unwrap()
    }

    pub fn peer_client(&self, id: u64) -> Arc<ClientConfig> {
        let n = self.node(id);
        peer_client_config(self.ca.cert_pem(), &n.cert_pem, &n.key_pem).unwrap()
    }
}

/// Which side failed the handshake, and why.
#[derive(Debug)]
pub(crate) struct HandshakeError {
    pub server_side: bool,
    pub error: rustls::Error,
}

/// Runs a full handshake between the two configs through in-memory buffers,
/// then sends a few application bytes each way.
pub(crate) fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    server_name: &str,
) -> Result<(ClientConnection, ServerConnection), HandshakeError> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut c = ClientConnection::new(client, name).unwrap();
    let mut s = ServerConnection::new(server).unwrap();
    let client_err = |error| HandshakeError {
        server_side: false,
        error,
    };
    let server_err = |error| HandshakeError {
        server_side: true,
        error,
    };

    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().map_err(server_err)?;
        }

        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().map_err(client_err)?;
        }

        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            exchange_data(&mut c, &mut s).map_err(server_err)?;
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish");
}

fn exchange_data(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
    use std::io::{Read as _, Write as _};
    c.writer().write_all(b"ping").unwrap();
    let mut buf = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut buf).unwrap();
    }
    s.read_tls(&mut &buf[..]).unwrap();
    s.process_new_packets()?;
    let mut got = [0u8; 4];
    s.reader().read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    Ok(())
}
