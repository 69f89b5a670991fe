//! A real `boshy virtual-ip-agent` process answering from a table on disk, and the DNS wire helpers the
//! bad-input and security tests share. The agent's pilot is a closed loopback port, so every
//! answer comes from the table it was started with.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use boshy_lab::binaries::BOSHY;

use crate::process::KilledOnDrop;
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

pub const HOST: &str = "example-httpbin.banana.sample-deployment.boshy";
pub const VIP: Ipv4Addr = Ipv4Addr::new(169, 254, 255, 7);

/// The agent process; killed when this value is dropped, however the test ends (its child is
/// behind a lock so that checks can take `&self` inside proptest's `Fn` closures).
pub struct Agent {
    child: Mutex<KilledOnDrop>,
    pub listen: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent on a free loopback port with a table holding [`HOST`] → [`VIP`].
    pub fn start() -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        write_table(dir.path());
        let config = format!(
            "listen: 127.0.0.1:{port}\npilots: [\"http://127.0.0.1:9\"]\ninsecure_plaintext: true\ntable_path: {}\n",
            dir.path().join("table.json").display()
        );
        std::fs::write(dir.path().join("agent.yml"), config).unwrap();
        let log = dir.path().join("agent.log");
        let child = Command::new(crate::workspace_binary(BOSHY))
            .args(["virtual-ip-agent", "--config"])
            .arg(dir.path().join("agent.yml"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start boshy virtual-ip-agent");
        let agent = Agent {
            child: Mutex::new(KilledOnDrop(child)),
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            log,
            _dir: dir,
        };
        agent.wait_until_answering();
        agent
    }

    fn wait_until_answering(&self) {
        for _ in 0..100 {
            self.assert_running();
            let socket = udp_socket(Duration::from_millis(100));
            if udp_exchange(&socket, self.listen, &query(HOST, RecordType::A, 1)).is_some() {
                return;
            }
        }
        panic!("virtual-ip-agent never answered:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails the test with the agent's log when it has exited.
    pub fn assert_running(&self) {
        let status = self.child.lock().unwrap().try_wait().unwrap();
        if let Some(status) = status {
            panic!(
                "virtual-ip-agent exited with {status}:\n{}",
                self.log_text()
            );
        }
    }

    /// Fails the test unless the agent still answers [`HOST`] with [`VIP`] over UDP and TCP.
    pub fn assert_still_answers(&self) {
        self.assert_running();
        let socket = udp_socket(Duration::from_secs(2));
        let udp = udp_exchange(&socket, self.listen, &query(HOST, RecordType::A, 7))
            .expect("the agent answers over UDP");
        assert_eq!(a_records(&udp), [VIP], "{udp:?}");
        let tcp = tcp_exchange(self.listen, &query(HOST, RecordType::A, 8));
        assert_eq!(a_records(&tcp), [VIP], "{tcp:?}");
    }
}

fn write_table(dir: &Path) {
    let table = format!(r#"{{"version": 3, "tld": "boshy", "names": {{"{HOST}": "{VIP}"}}}}"#);
    std::fs::write(dir.join("table.json"), table).unwrap();
}

/// A port free for both UDP and TCP on 127.0.0.1 right now.
pub fn free_port() -> u16 {
    loop {
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port))).is_ok() {
            return port;
        }
    }
}

/// A query for `name`/`qtype` with id `id`, encoded.
pub fn query(name: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    message.to_vec().unwrap()
}

pub fn udp_socket(timeout: Duration) -> UdpSocket {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    socket.set_read_timeout(Some(timeout)).unwrap();
    socket
}

/// Sends `packet` and returns the response with the same id, `None` when none came in time.
/// Responses to earlier packets (other ids) are skipped.
pub fn udp_exchange(socket: &UdpSocket, to: SocketAddr, packet: &[u8]) -> Option<Message> {
    socket.send_to(packet, to).unwrap();
    let id = u16::from_be_bytes([packet[0], packet[1]]);
    let mut buffer = [0u8; 65535];
    loop {
        let (len, _) = socket.recv_from(&mut buffer).ok()?;
        let response = Message::from_vec(&buffer[..len]).expect("every response decodes");
        if response.metadata.id == id {
            return Some(response);
        }
    }
}

/// One query over a fresh TCP connection, framed with its two-byte length.
pub fn tcp_exchange(to: SocketAddr, packet: &[u8]) -> Message {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.write_all(&tcp_frame(packet)).unwrap();
    read_tcp_message(&mut stream).expect("a framed response")
}

pub fn tcp_frame(packet: &[u8]) -> Vec<u8> {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    framed
}

/// Reads one length-prefixed message; `None` when the server closed (or reset) the connection.
pub fn read_tcp_message(stream: &mut std::net::TcpStream) -> Option<Message> {
    use std::io::Read;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).ok()?;
    let mut body = vec![0u8; u16::from_be_bytes(length) as usize];
    stream.read_exact(&mut body).ok()?;
    Some(Message::from_vec(&body).expect("every response decodes"))
}

pub fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}
