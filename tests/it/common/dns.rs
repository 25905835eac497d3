//! The one DNS responder of the tests: a small fixed zone served on UDP and TCP at one
//! address, for DNS checks to probe and for the runner's resolver to ask. Tests choose the A
//! records of `svc.test.`; everything else in the zone is the same for all of them.

use super::PATIENCE;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

/// What the responder did: queries seen per transport.
#[derive(Default)]
pub struct Seen {
    pub udp: AtomicUsize,
    pub tcp: AtomicUsize,
}

/// The A records of `svc.test.` unless a test asks for others: the two addresses that
/// `ns.test.` also names.
pub const SVC_TEST: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

/// The zone:
/// - `svc.test.`: A `svc` (in that order), MX 10 mail.svc.test., TXT "v=spf1 -all", no other
///   records (an AAAA question gets an empty answer);
/// - `ns.test.`: A 127.0.0.2 and 127.0.0.3 (where tests run several responders);
/// - `dual.test.`: A 127.0.0.1 and AAAA ::1;
/// - `broken.test.`: SERVFAIL; `silent.test.`: no answer; `garbage.test.`: bytes that are no
///   DNS message; anything else: NXDOMAIN.
pub fn answer(svc: &[Ipv4Addr], query_bytes: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(query_bytes).ok()?;
    let question = query.queries.first()?.clone();
    let name = question.name().to_ascii().to_lowercase();
    match name.as_str() {
        "silent.test." => return None,
        "garbage.test." => {
            let mut bytes = query_bytes[..2].to_vec();
            bytes.extend_from_slice(b"\x81");
            return Some(bytes);
        }
        _ => {}
    }
    let mut answer = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
    answer.metadata.recursion_desired = query.metadata.recursion_desired;
    answer.metadata.authoritative = true;
    answer.add_query(question.clone());
    let owner = question.name().clone();
    let a_records = match name.as_str() {
        "svc.test." => svc,
        _ => &SVC_TEST[..],
    };
    match (name.as_str(), question.query_type()) {
        ("svc.test." | "ns.test.", RecordType::A) => {
            for address in a_records {
                answer.add_answer(Record::from_rdata(owner.clone(), 60, RData::A(A(*address))));
            }
        }
        ("svc.test.", RecordType::MX) => {
            answer.add_answer(Record::from_rdata(
                owner,
                300,
                RData::MX(MX::new(10, Name::from_ascii("mail.svc.test.").unwrap())),
            ));
        }
        ("svc.test.", RecordType::TXT) => {
            answer.add_answer(Record::from_rdata(
                owner,
                300,
                RData::TXT(TXT::new(vec!["v=spf1 -all".to_string()])),
            ));
        }
        ("svc.test." | "ns.test.", _) => {}
        ("dual.test.", RecordType::A) => {
            answer.add_answer(Record::from_rdata(
                owner,
                60,
                RData::A(A(Ipv4Addr::LOCALHOST)),
            ));
        }
        ("dual.test.", RecordType::AAAA) => {
            answer.add_answer(Record::from_rdata(
                owner,
                60,
                RData::AAAA(AAAA(std::net::Ipv6Addr::LOCALHOST)),
            ));
        }
        ("dual.test.", _) => {}
        ("broken.test.", _) => answer.metadata.response_code = ResponseCode::ServFail,
        _ => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    answer.to_vec().ok()
}

/// Serves the zone, with `svc.test.` at 127.0.0.2 and 127.0.0.3, on UDP and TCP at `ip:port`.
pub async fn serve_dns(ip: &str, port: u16, seen: Arc<Seen>) -> SocketAddr {
    serve_zone(ip, port, &SVC_TEST, seen).await
}

/// Serves the zone, with `svc.test.` at `svc`, on UDP and TCP at `ip:port`.
pub async fn serve_zone(ip: &str, port: u16, svc: &[Ipv4Addr], seen: Arc<Seen>) -> SocketAddr {
    let svc: Arc<[Ipv4Addr]> = svc.into();
    let udp = UdpSocket::bind((ip, port)).await.unwrap();
    let address = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(address).await.unwrap();
    let udp_seen = Arc::clone(&seen);
    let udp_svc = Arc::clone(&svc);
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((length, peer)) = udp.recv_from(&mut buffer).await {
            udp_seen.udp.fetch_add(1, Ordering::SeqCst);
            if let Some(bytes) = answer(&udp_svc, &buffer[..length]) {
                let _ = udp.send_to(&bytes, peer).await;
            }
        }
    });
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let seen = Arc::clone(&seen);
            let svc = Arc::clone(&svc);
            tokio::spawn(async move {
                let mut prefix = [0u8; 2];
                if stream.read_exact(&mut prefix).await.is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                if stream.read_exact(&mut query).await.is_err() {
                    return;
                }
                seen.tcp.fetch_add(1, Ordering::SeqCst);
                match answer(&svc, &query) {
                    Some(bytes) => {
                        let mut framed = (bytes.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&bytes);
                        let _ = stream.write_all(&framed).await;
                    }
                    // Silence: hold the connection open without a word.
                    None => tokio::time::sleep(PATIENCE).await,
                }
            });
        }
    });
    address
}

/// A free port on which both UDP and TCP can bind at each of `ips`.
pub async fn dns_port(ips: &[&str]) -> u16 {
    'attempt: for _ in 0..50 {
        let probe = UdpSocket::bind((ips[0], 0)).await.unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        for ip in ips {
            if UdpSocket::bind((*ip, port)).await.is_err()
                || TcpListener::bind((*ip, port)).await.is_err()
            {
                continue 'attempt;
            }
        }
        return port;
    }
    panic!("no port free for DNS on all of {ips:?}");
}

/// One responder on 127.0.0.1, with `svc.test.` at `svc`: a server for `dns_servers`.
pub async fn dns_server(svc: &[Ipv4Addr]) -> SocketAddr {
    let port = dns_port(&["127.0.0.1"]).await;
    serve_zone("127.0.0.1", port, svc, Arc::new(Seen::default())).await
}
