//! Batched egress: transmits collected during one pass of the worker loop leave in `sendmmsg` calls.
//!
//! A fan-out produces one datagram per viewer, each to a different address, so GSO (one destination) does
//! not apply; `sendmmsg` hands up to [`BATCH`] of them to the kernel in one system call. A batch is sent as
//! soon as it is full and at the end of every pass of the worker loop, before the worker waits again: there
//! is no timer, so batching never adds latency beyond the pass that produced the packets.
//!
//! Sends go straight to the socket's file descriptor, not through tokio's readiness tracking, so a datagram
//! is refused only when the kernel refuses it. A full send buffer (`EAGAIN`) drops the rest of the batch,
//! counted as send errors, as a router drops packets it cannot queue; a destination the kernel rejects on
//! its own (e.g. an address family mismatch) costs only its own datagram.

use std::io::IoSlice;
use std::net::UdpSocket as StdUdpSocket;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use nix::errno::Errno;
use nix::sys::socket::{sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use str0m::net::Transmit;

use crate::MediaStats;

/// Most datagrams per `sendmmsg` call.
pub const BATCH: usize = 32;

/// Transmits waiting for the next `sendmmsg`.
pub(crate) struct SendBatch {
    queue: Vec<Transmit>,
    headers: MultiHeaders<SockaddrStorage>,
    /// `sendmmsg` calls made.
    pub calls: u64,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch").field("queued", &self.queue.len()).field("calls", &self.calls).finish()
    }
}

impl SendBatch {
    pub fn new() -> SendBatch {
        SendBatch { queue: Vec::with_capacity(BATCH), headers: MultiHeaders::preallocate(BATCH, None), calls: 0 }
    }

    /// Queue one transmit; sends the batch when it is full.
    pub fn push(&mut self, t: Transmit, fd: &impl AsRawFd, stats: &MediaStats) {
        self.queue.push(t);
        if self.queue.len() >= BATCH {
            self.send(fd, stats);
        }
    }

    /// Send everything queued.
    pub fn send(&mut self, fd: &impl AsRawFd, stats: &MediaStats) {
        let mut start = 0;
        while start < self.queue.len() {
            let pending = self.queue.get(start..).unwrap_or_default();
            let n = pending.len().min(BATCH);
            let slices: [[IoSlice<'_>; 1]; BATCH] =
                std::array::from_fn(|i| [IoSlice::new(pending.get(i).map(|t| &t.contents[..]).unwrap_or(&[]))]);
            let addrs: [Option<SockaddrStorage>; BATCH] =
                std::array::from_fn(|i| pending.get(i).map(|t| SockaddrStorage::from(t.destination)));
            self.calls += 1;
            let result = sendmmsg(
                fd.as_raw_fd(),
                &mut self.headers,
                slices.iter().take(n),
                &addrs[..n],
                [],
                MsgFlags::MSG_DONTWAIT,
            );
            match result {
                Ok(sent) => {
                    let (mut count, mut bytes) = (0usize, 0usize);
                    for r in sent {
                        count += 1;
                        bytes += r.bytes;
                    }
                    stats.datagrams_out.fetch_add(count as u64, Ordering::Relaxed);
                    stats.bytes_out.fetch_add(bytes as u64, Ordering::Relaxed);
                    // A short count means the next datagram failed; the next call reports why.
                    start += count.max(1).min(n);
                    if count == 0 {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    // The send buffer is full: drop the rest of this batch rather than wait.
                    stats.send_errors.fetch_add(n as u64, Ordering::Relaxed);
                    start += n;
                }
                Err(_) => {
                    // The first datagram was refused (e.g. unreachable destination): skip it alone.
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                    start += 1;
                }
            }
        }
        self.queue.clear();
    }
}

/// Ask for `bytes` of kernel receive and send buffer on `socket` (Linux caps it at net.core.rmem_max and
/// wmem_max); returns what the kernel granted, (receive, send). Linux reports twice the granted size (the
/// double covers its bookkeeping), so the reported values are halved.
pub(crate) fn size_buffers(socket: &StdUdpSocket, bytes: usize) -> (usize, usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
    let _ = setsockopt(socket, sockopt::SndBuf, &bytes);
    let granted = |v: nix::Result<usize>| v.unwrap_or(0) / 2;
    (granted(getsockopt(socket, sockopt::RcvBuf)), granted(getsockopt(socket, sockopt::SndBuf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use str0m::net::{DatagramSend, Protocol};

    fn transmit(from: SocketAddr, to: SocketAddr, byte: u8) -> Transmit {
        Transmit { proto: Protocol::Udp, source: from, destination: to, contents: DatagramSend::from(vec![byte; 100]) }
    }

    #[test]
    fn a_refused_destination_costs_only_its_own_datagram() {
        let sender = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
        let from = sender.local_addr().expect("addr");
        let receivers: Vec<StdUdpSocket> = (0..40).map(|_| StdUdpSocket::bind("127.0.0.1:0").expect("bind")).collect();
        let stats = MediaStats::default();
        let mut batch = SendBatch::new();
        // 40 datagrams (more than one batch), with an IPv6 destination the IPv4 socket refuses at #5.
        for (i, r) in receivers.iter().enumerate() {
            if i == 5 {
                batch.push(transmit(from, "[::1]:9".parse().expect("addr"), 0), &sender, &stats);
            }
            batch.push(transmit(from, r.local_addr().expect("addr"), i as u8), &sender, &stats);
        }
        batch.send(&sender, &stats);
        assert_eq!(stats.datagrams_out.load(Ordering::Relaxed), 40);
        assert_eq!(stats.send_errors.load(Ordering::Relaxed), 1);
        assert_eq!(stats.bytes_out.load(Ordering::Relaxed), 4000);
        assert!(batch.calls >= 2, "41 datagrams need at least two calls");
        for (i, r) in receivers.iter().enumerate() {
            r.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 200];
            let (n, src) = r.recv_from(&mut buf).expect("every receiver got its datagram");
            assert_eq!((n, src, buf[0]), (100, from, i as u8));
        }
    }
}
