//! The socket between a volume's supervisor and its worker: a socket pair of
//! sequenced packets, one message per packet, a descriptor riding along
//! where one is handed over.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};

/// What a worker tells its supervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromWorker {
    /// The first worker mounted the volume; its FUSE connection rides along.
    Mounted,
    /// A worker took the connection over and serves it.
    Serving,
    /// Someone allowed to asked for the worker to be replaced (`s3vol restart`).
    Restart,
}

/// What a supervisor tells its worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToWorker {
    /// Unmount, as SIGTERM would (a second one: at once).
    Stop,
    /// Finish what is in flight and exit with `RETIRED`.
    Retire,
}

const WORDS: [(&[u8], Message); 5] = [
    (b"mounted", Message::From(FromWorker::Mounted)),
    (b"serving", Message::From(FromWorker::Serving)),
    (b"restart", Message::From(FromWorker::Restart)),
    (b"stop", Message::To(ToWorker::Stop)),
    (b"retire", Message::To(ToWorker::Retire)),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Message {
    From(FromWorker),
    To(ToWorker),
}

fn word(message: Message) -> &'static [u8] {
    WORDS
        .iter()
        .find(|(_, m)| *m == message)
        .expect("every message has a word")
        .0
}

fn message(word: &[u8]) -> Option<Message> {
    WORDS.iter().find(|(w, _)| *w == word).map(|(_, m)| *m)
}

/// A new pair: the supervisor's end and the worker's (close-on-exec both;
/// the worker's is passed at a fixed number).
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?)
}

fn send_word(link: &OwnedFd, word: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let iov = [io::IoSlice::new(word)];
    let fds = fd.map(|fd| [fd.as_raw_fd()]);
    let control: Vec<ControlMessage> = fds.iter().map(|f| ControlMessage::ScmRights(f)).collect();
    sendmsg::<()>(
        link.as_raw_fd(),
        &iov,
        &control,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Tells the supervisor `message`, handing it `fd` if given.
pub fn tell_supervisor(
    link: &OwnedFd,
    message: FromWorker,
    fd: Option<&OwnedFd>,
) -> io::Result<()> {
    send_word(link, word(Message::From(message)), fd)
}

/// Tells the worker `message`.
pub fn send(link: &OwnedFd, message: ToWorker) -> io::Result<()> {
    send_word(link, word(Message::To(message)), None)
}

/// One packet: `None` at the end of the stream (the other side gone),
/// [`io::ErrorKind::WouldBlock`] when nothing waits and `nonblocking`.
fn receive_word(
    link: &OwnedFd,
    nonblocking: bool,
) -> io::Result<Option<(Message, Option<OwnedFd>)>> {
    let mut buf = [0u8; 16];
    let mut iov = [io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!(std::os::fd::RawFd);
    let mut flags = MsgFlags::MSG_CMSG_CLOEXEC;
    if nonblocking {
        flags |= MsgFlags::MSG_DONTWAIT;
    }
    let (len, fd) = loop {
        match recvmsg::<()>(link.as_raw_fd(), &mut iov, Some(&mut space), flags) {
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(got) => {
                let mut fd = None;
                for control in got.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(fds) = control {
                        for raw in fds {
                            // SAFETY: the kernel just installed this descriptor
                            // in our table for this message.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
                break (got.bytes, fd);
            }
        }
    };
    if len == 0 {
        return Ok(None);
    }
    match message(&buf[..len]) {
        Some(m) => Ok(Some((m, fd))),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "an unknown message",
        )),
    }
}

/// What the worker said, without waiting: `Ok(None)` when nothing waits or
/// the worker is gone.
pub fn receive(link: &OwnedFd) -> io::Result<Option<(FromWorker, Option<OwnedFd>)>> {
    match receive_word(link, true) {
        Ok(Some((Message::From(m), fd))) => Ok(Some((m, fd))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits for what the supervisor says: `None` once it is gone.
pub fn wait_for_supervisor(link: &OwnedFd) -> io::Result<Option<ToWorker>> {
    loop {
        match receive_word(link, false)? {
            None => return Ok(None),
            Some((Message::To(m), _)) => return Ok(Some(m)),
            Some((Message::From(_), _)) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_a_descriptor_cross_the_link() {
        let (supervisor, worker) = pair().unwrap();
        let (carried, _) = pair().unwrap();
        tell_supervisor(&worker, FromWorker::Mounted, Some(&carried)).unwrap();
        tell_supervisor(&worker, FromWorker::Serving, None).unwrap();
        let (first, fd) = receive(&supervisor).unwrap().unwrap();
        assert_eq!(first, FromWorker::Mounted);
        assert!(fd.is_some());
        assert_eq!(
            receive(&supervisor).unwrap().unwrap().0,
            FromWorker::Serving
        );
        assert!(
            receive(&supervisor).unwrap().is_none(),
            "nothing more waits"
        );
        send(&supervisor, ToWorker::Retire).unwrap();
        assert_eq!(
            wait_for_supervisor(&worker).unwrap(),
            Some(ToWorker::Retire)
        );
        drop(supervisor);
        assert_eq!(wait_for_supervisor(&worker).unwrap(), None);
    }
}
