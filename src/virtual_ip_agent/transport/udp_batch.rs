//! Datagrams in batches: `recvmmsg(2)` takes every query waiting on the socket (up to
//! [`BATCH`]) in one system call and `sendmmsg(2)` sends their replies in one more. Under load
//! this divides the per-query system-call cost, which is most of what answering costs once the
//! fast path has made the answer itself a lookup and a copy.
//!
//! For a blocking socket on a thread of its own: `receive` waits for the first datagram
//! (`MSG_WAITFORONE`) and takes the others already waiting; on a non-blocking socket it returns
//! `WouldBlock` when there is none, as the socket does.
//!
//! This is the crate's only `unsafe` code (the crate denies it elsewhere): the two system calls
//! and the reading of the addresses they fill in, each with the argument for its soundness.
//! What the module hands out is safe: it works on a `UdpSocket` it borrows, and on buffers it
//! owns.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;

/// Datagrams per system call.
pub(crate) const BATCH: usize = 32;

/// Receive buffers and their senders' addresses, reused for every batch.
pub(crate) struct Batch<const SIZE: usize> {
    buffers: Box<[[u8; SIZE]; BATCH]>,
    lengths: [usize; BATCH],
    addresses: [libc::sockaddr_storage; BATCH],
    address_lengths: [libc::socklen_t; BATCH],
    len: usize,
}

impl<const SIZE: usize> Batch<SIZE> {
    pub(crate) fn new() -> Self {
        Batch {
            buffers: vec![[0u8; SIZE]; BATCH]
                .into_boxed_slice()
                .try_into()
                .unwrap_or_else(|_| unreachable!("BATCH buffers were allocated")),
            lengths: [0; BATCH],
            // SAFETY: sockaddr_storage is plain old data; all zeroes is a valid (AF_UNSPEC) value.
            addresses: unsafe { zeroed() },
            address_lengths: [0; BATCH],
            len: 0,
        }
    }

    /// Waits for a datagram and receives it with every other one waiting, up to [`BATCH`];
    /// returns how many.
    pub(crate) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let mut iovecs: [libc::iovec; BATCH] = std::array::from_fn(|i| libc::iovec {
            iov_base: self.buffers[i].as_mut_ptr().cast(),
            iov_len: SIZE,
        });
        // SAFETY: mmsghdr is plain old data (integers and raw pointers), for which all zeroes is
        // a valid value; every pointer the call reads is set below.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, header) in headers.iter_mut().enumerate() {
            header.msg_hdr.msg_name =
                (&mut self.addresses[i] as *mut libc::sockaddr_storage).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_hdr.msg_iov = &mut iovecs[i];
            header.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the socket is borrowed, so its descriptor stays open for the call. Each of the
        // BATCH headers points at one iovec (alive until the end of this function) for a buffer
        // of `self` of exactly SIZE bytes, and at an address buffer of `self` of the length it
        // declares; the kernel writes only there and into the headers. The timeout may be null.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            self.len = 0;
            return Err(io::Error::last_os_error());
        }
        self.len = received as usize;
        for (i, header) in headers.iter().take(self.len).enumerate() {
            self.lengths[i] = header.msg_len as usize;
            self.address_lengths[i] = header.msg_hdr.msg_namelen;
        }
        Ok(self.len)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Datagram `i` of the last batch (cut at `SIZE`, as a single receive would cut it).
    pub(crate) fn datagram(&self, i: usize) -> &[u8] {
        &self.buffers[i][..self.lengths[i].min(SIZE)]
    }

    /// Who sent datagram `i`; `None` for an address family other than IPv4 or IPv6.
    pub(crate) fn sender(&self, i: usize) -> Option<SocketAddr> {
        socket_addr(&self.addresses[i])
    }

    /// Sends `replies` (datagram index, bytes; at most [`BATCH`]) to their senders in one call;
    /// returns how many went out, in order (the caller sends the rest one by one).
    pub(crate) fn send(&self, socket: &UdpSocket, replies: &[(usize, &[u8])]) -> io::Result<usize> {
        if replies.is_empty() {
            return Ok(0);
        }
        let count = replies.len().min(BATCH);
        // SAFETY: iovec is a raw pointer and a length, for which all zeroes is a valid value; the
        // call reads only the first `count`, set below.
        let mut iovecs: [libc::iovec; BATCH] = unsafe { zeroed() };
        // SAFETY: mmsghdr is plain old data, as in `receive`; the first `count` are set below.
        let mut headers: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (k, (i, bytes)) in replies.iter().take(count).enumerate() {
            iovecs[k] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            let header = &mut headers[k].msg_hdr;
            header.msg_name = (&self.addresses[*i] as *const libc::sockaddr_storage
                as *mut libc::sockaddr_storage)
                .cast();
            header.msg_namelen = self.address_lengths[*i];
            header.msg_iov = &mut iovecs[k];
            header.msg_iovlen = 1;
        }
        // SAFETY: the socket is borrowed, so its descriptor stays open for the call. The first
        // `count` headers point at iovecs for `replies` and at addresses of `self`, with their
        // lengths, all alive until the end of this function; the kernel only reads them (the
        // address is cast to *mut for the C type, never written) and writes each header's
        // msg_len.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }
}

fn socket_addr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET => {
            // SAFETY: sockaddr_storage is large enough and aligned for every socket address
            // type, the family says the kernel wrote a sockaddr_in, and any bytes are a valid
            // sockaddr_in (integers only); the reference lives no longer than `storage`.
            let v4 =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as for sockaddr_in above: size, alignment, family and integers only.
            let v6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_receives_every_waiting_datagram_and_answers_each_sender() {
        let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        server.set_nonblocking(true).unwrap();
        let clients: Vec<std::net::UdpSocket> = (0..3)
            .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
            .collect();
        for (i, client) in clients.iter().enumerate() {
            client
                .send_to(&[i as u8; 5], server.local_addr().unwrap())
                .unwrap();
        }
        let mut batch = Batch::<16>::new();
        let mut received = 0;
        for _ in 0..100 {
            match batch.receive(&server) {
                Ok(n) => {
                    received = n;
                    if n == 3 {
                        break;
                    }
                }
                Err(err) => assert_eq!(err.kind(), io::ErrorKind::WouldBlock),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(received, 3, "all three datagrams in one batch");
        let replies: Vec<(usize, Vec<u8>)> = (0..3)
            .map(|i| (i, [b"re:".as_slice(), batch.datagram(i)].concat()))
            .collect();
        let borrowed: Vec<(usize, &[u8])> =
            replies.iter().map(|(i, r)| (*i, r.as_slice())).collect();
        assert_eq!(batch.send(&server, &borrowed).unwrap(), 3);
        for client in &clients {
            let mut buf = [0u8; 16];
            let (len, from) = client.recv_from(&mut buf).unwrap();
            assert_eq!(from, server.local_addr().unwrap());
            let sender = client.local_addr().unwrap();
            let i = (0..3).find(|i| batch.sender(*i) == Some(sender)).unwrap();
            assert_eq!(&buf[..len], [b"re:".as_slice(), &[i as u8; 5]].concat());
        }
        let mut empty = Batch::<16>::new();
        let err = empty.receive(&server).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
    }
}
