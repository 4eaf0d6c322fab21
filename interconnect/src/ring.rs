//! The ring protocol over one channel region: [`Channel`] = one [`Tx`] + one [`Rx`].
//!
//! Non-blocking only: every call either makes progress or returns `WouldBlock`
//! (sender: no credit) / `Ok(None)`/`Ok(false)` (receiver: nothing yet). Blocking,
//! matching and notification live in the MPI layer. Everything read from the region is
//! validated before use; the first violation makes the direction *broken* (sticky
//! `Malformed`) and bumps the malformed counter the monitor reads.

use crate::layout::{
    self, CTX, Dir, Frag, Geometry, INLINE_MAX, KIND_ABORT, KIND_FRAG, KIND_INLINE, LINE, PAYLOAD,
    SEQ,
};
use crate::shm::Region;
use crate::{Error, Rank};
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

/// Envelope of a message at the head of a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Tag.
    pub tag: u32,
    /// Communicator context id.
    pub ctx: u32,
    /// Total length in bytes.
    pub len: usize,
}

/// Sending half of a channel.
pub struct Tx {
    r: Region,
    d: Dir,
    g: Geometry,
    peer: Rank,
    session: u32,
    head: u64,
    consumed: u64,
    data_head: u64,
    data_tail: u64,
    inflight: bool,
    broken: bool,
    /// The last chunk's length, rounded to lines (it ends at `data_head`).
    last_rounded: u64,
}

/// Smallest whole message that may reuse the last one's data lines (see `send_slow`).
const REUSE_MIN: usize = 4096;

/// Receiving half of a channel.
pub struct Rx {
    r: Region,
    d: Dir,
    g: Geometry,
    peer: Rank,
    session: u32,
    next: u64,
    data_tail: u64,
    /// Message in progress: (envelope, bytes received so far).
    cur: Option<(Envelope, usize)>,
    peeked: Option<Slotv>,
    broken: bool,
    wake_check: bool,
}

/// What [`Rx::take_small`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Small {
    /// Nothing published yet.
    Empty,
    /// Something the fast path does not handle: use [`Rx::peek`].
    Other,
    /// This message was taken.
    Took(Envelope),
}

/// A decoded, validated slot.
#[derive(Clone, Copy, Debug)]
struct Slotv {
    env: Envelope,
    kind: u32,
    frag: Frag,
    inline: [u64; 2],
}

/// Both halves of one channel, plus the control and liveness words.
pub struct Channel {
    r: Region,
    side: usize,
    peer_gen: u32,
    /// Sending half.
    pub tx: Tx,
    /// Receiving half.
    pub rx: Rx,
}

impl Channel {
    /// Attaches to an initialised region as world rank `me`, talking to `peer`. The
    /// header is read once and checked (magic, version, geometry, ranks); the peer's
    /// generation is remembered ([`Channel::check`] compares it).
    pub fn attach(region: Region, me: Rank, peer: Rank) -> Result<Channel, Error> {
        let (g, ranks) = layout::read_header(&region)?;
        let side = match ranks {
            [a, b] if a == me && b == peer => 0,
            [a, b] if a == peer && b == me => 1,
            _ => {
                return Err(Error::config(
                    "channel ranks",
                    alloc::format!("{ranks:?} for {me}<->{peer}"),
                ));
            }
        };
        Channel::open(region, side, peer, g)
    }

    /// Attaches as side `side` of a channel of geometry `g` to world rank `peer`
    /// without reading the header, which the peer can rewrite: for a side that knows
    /// both from elsewhere (a guest's trusted command line; the channel it had before a
    /// reopen, which never changes them).
    pub fn open(region: Region, side: usize, peer: Rank, g: Geometry) -> Result<Channel, Error> {
        g.check_fits(&region)?;
        let side = side & 1;
        let session = layout::session(&region);
        let tx = Tx {
            r: region.clone(),
            d: g.dir(side),
            g,
            peer,
            session,
            head: 0,
            consumed: 0,
            data_head: 0,
            data_tail: 0,
            inflight: false,
            broken: false,
            last_rounded: 0,
        };
        let rx = Rx {
            r: region.clone(),
            d: g.dir(1 - side),
            g,
            peer,
            session,
            next: 0,
            data_tail: 0,
            cur: None,
            peeked: None,
            broken: false,
            wake_check: false,
        };
        Ok(Channel {
            peer_gen: region.load32(layout::generation_off(1 - side), Acquire),
            r: region,
            side,
            tx,
            rx,
        })
    }

    /// Which side of the region this endpoint is (0: the lower rank).
    pub fn side(&self) -> usize {
        self.side
    }

    /// The channel's geometry.
    pub fn geometry(&self) -> Geometry {
        self.tx.g
    }

    /// `Err(Revoked)` if the monitor revoked the channel, `Err(PeerDead)` if the peer
    /// was marked dead or is no longer the generation this endpoint attached to.
    #[inline]
    pub fn check(&self) -> Result<(), Error> {
        let peer = self.tx.peer;
        if self.r.load32(layout::CONTROL, Relaxed) != layout::OPEN {
            return Err(Error::Revoked { rank: peer });
        }
        if self.r.load32(layout::alive_off(1 - self.side), Relaxed) == layout::DEAD
            || self
                .r
                .load32(layout::generation_off(1 - self.side), Relaxed)
                != self.peer_gen
        {
            return Err(Error::PeerDead { rank: peer });
        }
        Ok(())
    }

    /// How many more slots side 0 has filled than side 1 (one per message, one per
    /// fragment of a long one), modulo the ring's slots: the same on both sides once
    /// everything sent was received. Slot `i` of both directions share a line, so a
    /// reply shares its request's line only while this is 0, as on a fresh channel;
    /// see [`Endpoint::align`](crate::Endpoint::align).
    pub fn skew(&self) -> u64 {
        let (s0, s1) = match self.side {
            0 => (self.tx.head, self.rx.next),
            _ => (self.rx.next, self.tx.head),
        };
        s0.wrapping_sub(s1) & (u64::from(self.tx.g.slots) - 1)
    }

    /// The peer's generation this endpoint attached to.
    pub fn peer_generation(&self) -> u32 {
        self.peer_gen
    }

    /// The region (for the monitor's meter or tests).
    pub fn region(&self) -> &Region {
        &self.r
    }
}

impl Tx {
    fn malformed(&mut self, what: &'static str, value: u64) -> Error {
        if !self.broken {
            self.broken = true;
            self.r.add64(self.d.tx_malformed(), 1);
        }
        Error::Malformed {
            rank: self.peer,
            what,
            value,
        }
    }

    /// Credit check for one slot; re-reads the receiver's position only when out.
    /// Re-reads the receiver's counters (validated: they only move forward, and never
    /// past what was sent).
    fn refresh(&mut self) -> Result<(), Error> {
        let c = self.r.load64(self.d.consumed(), Acquire);
        if c < self.consumed || c > self.head {
            return Err(self.malformed("consumed counter", c));
        }
        self.consumed = c;
        let t = self.r.load64(self.d.data_tail(), Acquire);
        if t < self.data_tail || t > self.data_head {
            return Err(self.malformed("data tail", t));
        }
        self.data_tail = t;
        Ok(())
    }

    /// Credit check for one slot; re-reads the receiver's position only when out.
    fn slot_credit(&mut self) -> Result<(), Error> {
        if self.head - self.consumed >= u64::from(self.g.slots) {
            self.refresh()?;
            if self.head - self.consumed >= u64::from(self.g.slots) {
                return Err(Error::WouldBlock { rank: self.peer });
            }
        }
        Ok(())
    }

    fn max_chunk(&self) -> u64 {
        (u64::from(self.g.data_len) / 4).min(64 << 10)
    }

    /// Where a chunk of `rounded` bytes goes if the data head is at `head`: contiguous,
    /// so it skips to the next lap when it would cross the end.
    fn place(&self, head: u64, rounded: u64) -> u64 {
        let dl = u64::from(self.g.data_len);
        if head % dl + rounded > dl {
            head + (dl - head % dl)
        } else {
            head
        }
    }

    /// True if a whole message of `len` bytes fits now (all or nothing: what a
    /// non-blocking send needs). Counts the abort of a half-sent message too.
    pub fn fits(&mut self, len: usize) -> Result<bool, Error> {
        self.refresh()?;
        let mut slots = u64::from(self.inflight);
        let mut head = self.data_head;
        if len <= INLINE_MAX {
            slots += 1;
        } else {
            let mut left = len as u64;
            while left > 0 {
                let chunk = left.min(self.max_chunk());
                let rounded = chunk.next_multiple_of(LINE as u64);
                head = self.place(head, rounded) + rounded;
                left -= chunk;
                slots += 1;
                if slots > u64::from(self.g.slots) {
                    return Ok(false);
                }
            }
        }
        Ok(self.head + slots - self.consumed <= u64::from(self.g.slots)
            && head - self.data_tail <= u64::from(self.g.data_len))
    }

    /// Writes the slot word by word (no byte loops), the first word (sequence and tag)
    /// last. The second payload word only when the message uses it.
    #[inline]
    fn publish(&mut self, tag: u32, ctx: u32, len: usize, kind: u32, payload: [u64; 2]) {
        let off = self.d.slots + LINE * (self.head & (u64::from(self.g.slots) - 1)) as usize;
        self.r.store64(
            off + CTX,
            u64::from(ctx) | u64::from(len as u32 | kind << 30) << 32,
            Relaxed,
        );
        self.r.store64(off + PAYLOAD, payload[0], Relaxed);
        if kind != KIND_INLINE || len > 8 {
            self.r.store64(off + PAYLOAD + 8, payload[1], Relaxed);
        }
        self.head += 1;
        // Last, and a full barrier, so that `peer_waiting` reads the flag after it.
        let seq = layout::seq_word(self.session, self.head);
        self.r
            .swap64(off + SEQ, u64::from(seq) | u64::from(tag) << 32);
    }

    /// Sends (more of) one message: `done` bytes of `data` already went out in earlier
    /// calls. Returns `Ok(())` once all of it is published, `Err(WouldBlock)` when out
    /// of credit (with `done` advanced). A call with `done == 0` starts a new message;
    /// if the previous one was left unfinished it is aborted first.
    pub fn send(&mut self, tag: u32, ctx: u32, data: &[u8], done: &mut usize) -> Result<(), Error> {
        if data.len() <= INLINE_MAX && !self.broken && !self.inflight {
            self.slot_credit()?;
            self.publish(tag, ctx, data.len(), KIND_INLINE, pack(data));
            *done = data.len();
            return Ok(());
        }
        self.send_slow(tag, ctx, data, done)
    }

    #[inline(never)]
    fn send_slow(
        &mut self,
        tag: u32,
        ctx: u32,
        data: &[u8],
        done: &mut usize,
    ) -> Result<(), Error> {
        if self.broken {
            return Err(Error::malformed(self.peer, "channel broken", 0));
        }
        if data.len() > self.g.max_msg as usize {
            return Err(Error::arg(
                "message length above max_msg",
                data.len() as u64,
            ));
        }
        if *done == 0 && self.inflight {
            self.abort()?;
        }
        if data.len() <= INLINE_MAX {
            self.slot_credit()?;
            self.publish(tag, ctx, data.len(), KIND_INLINE, pack(data));
            *done = data.len();
            return Ok(());
        }
        let dl = u64::from(self.g.data_len);
        while *done < data.len() {
            self.slot_credit()?;
            let chunk = (data.len() - *done).min(self.max_chunk() as usize);
            let rounded = (chunk as u64).next_multiple_of(LINE as u64);
            let mut pos = self.place(self.data_head, rounded);
            // A whole message no larger than the last chunk (which ended at `data_head`)
            // goes where that one did once it was consumed: one lap on, the same lines,
            // still warm in both caches (a request/reply walks the whole data area
            // otherwise; the receiver's checks accept it unchanged). Worth reading the
            // receiver's counters from 4 KiB on.
            let last = self.last_rounded;
            if *done == 0 && chunk == data.len() && chunk >= REUSE_MIN && rounded <= last {
                self.refresh()?;
                if self.data_tail == self.data_head {
                    pos = self.data_tail + dl - last;
                }
            }
            if pos + rounded - self.data_tail > dl {
                self.refresh()?;
                if pos + rounded - self.data_tail > dl {
                    return Err(Error::WouldBlock { rank: self.peer });
                }
            }
            self.r.write(
                self.d.data + (pos % dl) as usize,
                &data[*done..*done + chunk],
            );
            self.data_head = pos + rounded;
            self.last_rounded = rounded;
            self.r.store64(self.d.data_head(), self.data_head, Release);
            let desc = [pos, chunk as u64 | (*done as u64) << 32];
            self.publish(tag, ctx, data.len(), KIND_FRAG, desc);
            *done += chunk;
            self.inflight = *done < data.len();
        }
        Ok(())
    }

    /// Abandons the fragmented message in progress (tells the receiver).
    pub fn abort(&mut self) -> Result<(), Error> {
        if self.inflight {
            self.slot_credit()?;
            self.publish(0, 0, 0, KIND_ABORT, [0; 2]);
            self.inflight = false;
        }
        Ok(())
    }

    /// True if a fragmented message is half sent.
    pub fn inflight(&self) -> bool {
        self.inflight
    }

    /// After publishing: true if the receiver announced it is blocking (ring it).
    #[inline]
    pub fn peer_waiting(&self) -> bool {
        self.r.load32(self.d.rx_waiting(), SeqCst) != 0
    }

    /// Announces (or withdraws) that this sender is about to block for credit.
    pub fn set_waiting(&self, on: bool) {
        self.r.store32(self.d.tx_waiting(), on as u32, SeqCst);
    }
}

impl Rx {
    fn malformed(&mut self, what: &'static str, value: u64) -> Error {
        if !self.broken {
            self.broken = true;
            self.r.add64(self.d.rx_malformed(), 1);
        }
        self.cur = None;
        self.peeked = None;
        Error::Malformed {
            rank: self.peer,
            what,
            value,
        }
    }

    /// True if a slot whose sequence word is not the next message's is simply not
    /// written yet: it holds the previous lap's message (or zeroes), or a message of
    /// another session (a writer that has not noticed the channel was reopened).
    #[inline]
    fn unwritten(&self, seq: u32) -> bool {
        let old = (self.next + 1).saturating_sub(u64::from(self.g.slots));
        seq == layout::seq_word(self.session, old) || seq >> 24 != self.session
    }

    /// Reads and validates the next slot, if it is published.
    fn slot(&mut self) -> Result<Option<Slotv>, Error> {
        if self.broken {
            return Err(Error::malformed(self.peer, "channel broken", 0));
        }
        if let Some(s) = self.peeked {
            return Ok(Some(s));
        }
        let off = self.d.slots + LINE * (self.next & (u64::from(self.g.slots) - 1)) as usize;
        let first = self.r.load64(off + SEQ, Acquire);
        let (seq, tag) = (first as u32, (first >> 32) as u32);
        if seq != layout::seq_word(self.session, self.next + 1) {
            if self.unwritten(seq) {
                return Ok(None);
            }
            return Err(self.malformed("slot sequence", seq.into()));
        }
        let w = self.r.load64(off + CTX, Relaxed);
        let payload = [
            self.r.load64(off + PAYLOAD, Relaxed),
            self.r.load64(off + PAYLOAD + 8, Relaxed),
        ];
        let len_kind = (w >> 32) as u32;
        let env = Envelope {
            tag,
            ctx: w as u32,
            len: (len_kind & ((1 << 30) - 1)) as usize,
        };
        let mut frag = Frag::default();
        let kind = len_kind >> 30;
        match kind {
            KIND_INLINE if env.len <= INLINE_MAX => {}
            KIND_INLINE => return Err(self.malformed("inline length", env.len as u64)),
            KIND_ABORT => {}
            KIND_FRAG => {
                if env.len > self.g.max_msg as usize || env.len <= INLINE_MAX {
                    return Err(self.malformed("message length", env.len as u64));
                }
                frag = Frag {
                    pos: payload[0],
                    chunk: payload[1] as u32,
                    offset: (payload[1] >> 32) as u32,
                };
                let dl = u64::from(self.g.data_len);
                let (pos, chunk) = (frag.pos, u64::from(frag.chunk));
                let rounded = chunk.next_multiple_of(LINE as u64);
                let ok = chunk > 0
                    && u64::from(frag.offset) + chunk <= env.len as u64
                    && pos % LINE as u64 == 0
                    && pos >= self.data_tail
                    && pos - self.data_tail < dl
                    && pos % dl + rounded <= dl
                    && pos - self.data_tail + rounded <= dl;
                if !ok {
                    return Err(self.malformed("fragment position", pos));
                }
            }
            k => return Err(self.malformed("slot kind", k.into())),
        }
        let sv = Slotv {
            env,
            kind,
            frag,
            inline: payload,
        };
        self.peeked = Some(sv);
        Ok(Some(sv))
    }

    fn consume(&mut self, sv: &Slotv) {
        let frag = sv.kind == KIND_FRAG;
        if frag {
            self.data_tail = sv.frag.pos + u64::from(sv.frag.chunk).next_multiple_of(LINE as u64);
            self.r.store64(self.d.data_tail(), self.data_tail, Release);
        }
        self.advance(frag && (sv.frag.offset as usize + sv.frag.chunk as usize) < sv.env.len);
    }

    /// Frees the slot just taken, publishing the consumed count.
    ///
    /// A sender blocked for credit announced it in `tx_waiting`; seeing that flag needs
    /// a full barrier after the count (Dekker). Paying it per message would put it on
    /// every reply's path, so it is paid at *checkpoints* only: every `slots / 4`
    /// messages, and for a fragment that is not a message's last (`midway`: the sender
    /// may wait for data-area space). A sender blocked for slot credit has a full
    /// ring, so a receiver that keeps receiving reaches a checkpoint within a quarter
    /// ring; one that stops and waits rechecks in [`Rx::sender_blocked`] first.
    #[inline(always)]
    fn advance(&mut self, midway: bool) {
        self.peeked = None;
        self.next += 1;
        // `slots` is a power of two: a mask, not a division.
        let every = u64::from(self.g.slots / 4).max(1);
        if midway || self.next & (every - 1) == 0 {
            self.r.swap64(self.d.consumed(), self.next);
            self.wake_check = true;
        } else {
            self.r.store64(self.d.consumed(), self.next, Release);
        }
    }

    /// The receive fast path: if the next slot holds a whole inline message that fits
    /// `dst`, with context `ctx` and tag `tag` (`None`: any), copies it into `dst`,
    /// frees the slot and returns its envelope. Reads the words of one line and
    /// validates as it goes; anything else ([`Small::Other`]) is left for
    /// [`Rx::peek`], which also reports malformed slots.
    pub fn take_small(&mut self, dst: &mut [u8], ctx: u32, tag: Option<u32>) -> Small {
        if self.broken || self.cur.is_some() || self.peeked.is_some() {
            return Small::Other;
        }
        let off = self.d.slots + LINE * (self.next & (u64::from(self.g.slots) - 1)) as usize;
        let first = self.r.load64(off + SEQ, Acquire);
        let seq = first as u32;
        if seq != layout::seq_word(self.session, self.next + 1) {
            return if self.unwritten(seq) {
                Small::Empty
            } else {
                Small::Other
            };
        }
        let w = self.r.load64(off + CTX, Relaxed);
        let len_kind = (w >> 32) as u32;
        let len = (len_kind & ((1 << 30) - 1)) as usize;
        if len_kind >> 30 != KIND_INLINE || len > INLINE_MAX || len > dst.len() {
            return Small::Other;
        }
        let env = Envelope {
            tag: (first >> 32) as u32,
            ctx: w as u32,
            len,
        };
        if env.ctx != ctx || tag.is_some_and(|t| t != env.tag) {
            return Small::Other;
        }
        let lo = self.r.load64(off + PAYLOAD, Relaxed);
        let hi = if len > 8 {
            self.r.load64(off + PAYLOAD + 8, Relaxed)
        } else {
            0
        };
        unpack([lo, hi], &mut dst[..len]);
        self.advance(false);
        Small::Took(env)
    }

    /// The envelope of the next message, without consuming it. `Ok(None)`: nothing yet.
    /// While a message is partly taken, returns that message's envelope.
    pub fn peek(&mut self) -> Result<Option<Envelope>, Error> {
        if let Some((env, _)) = self.cur {
            return Ok(Some(env));
        }
        loop {
            match self.slot()? {
                None => return Ok(None),
                Some(s) if s.kind == KIND_ABORT => {
                    // An abort for a message this side never started: skip it.
                    self.consume(&s);
                }
                Some(s) => {
                    if s.kind == KIND_FRAG && s.frag.offset != 0 {
                        return Err(self.malformed("fragment offset", s.frag.offset.into()));
                    }
                    return Ok(Some(s.env));
                }
            }
        }
    }

    /// Takes the next message (or continues the one in progress) into `dst`; bytes past
    /// `dst.len()` are dropped. Returns `Ok(Some(total))` when the whole message has
    /// been taken, `Ok(None)` if more fragments are still to come, and `Err(Cancelled)`
    /// if the sender aborted it. At most `slots` slots are taken per call.
    pub fn take(&mut self, dst: &mut [u8]) -> Result<Option<usize>, Error> {
        for _ in 0..self.g.slots {
            let Some(s) = self.slot()? else {
                return Ok(None);
            };
            let (env, got) = match self.cur {
                Some(c) => c,
                None => {
                    if s.kind == KIND_ABORT {
                        self.consume(&s);
                        continue;
                    }
                    (s.env, 0)
                }
            };
            match s.kind {
                KIND_ABORT => {
                    self.consume(&s);
                    self.cur = None;
                    return Err(Error::Cancelled {
                        rank: self.peer,
                        tag: env.tag,
                    });
                }
                KIND_INLINE if got == 0 => {
                    let n = env.len.min(dst.len());
                    unpack(s.inline, &mut dst[..n]);
                    self.consume(&s);
                    return Ok(Some(env.len));
                }
                KIND_FRAG if s.env == env && s.frag.offset as usize == got => {
                    let chunk = s.frag.chunk as usize;
                    let end = (got + chunk).min(dst.len());
                    if got < end {
                        let src = self.d.data + (s.frag.pos % u64::from(self.g.data_len)) as usize;
                        self.r.read(src, &mut dst[got..end]);
                    }
                    self.consume(&s);
                    if got + chunk == env.len {
                        self.cur = None;
                        return Ok(Some(env.len));
                    }
                    self.cur = Some((env, got + chunk));
                }
                _ => return Err(self.malformed("fragment out of sequence", u64::from(s.kind))),
            }
        }
        Ok(None)
    }

    /// True if the message `peek` returned sits whole in its first slot (inline, or one
    /// fragment), so one `take` completes it.
    pub fn whole(&self) -> bool {
        self.cur.is_none()
            && self
                .peeked
                .is_some_and(|s| s.kind == KIND_INLINE || s.frag.chunk as usize == s.env.len)
    }

    /// True while a fragmented message is partly taken.
    pub fn in_progress(&self) -> bool {
        self.cur.is_some()
    }

    /// True once the peer sent something malformed on this direction.
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Announces (or withdraws) that this receiver is about to block.
    pub fn set_waiting(&self, on: bool) {
        self.r.store32(self.d.rx_waiting(), on as u32, SeqCst);
    }

    /// After consuming: true if a checkpoint was passed since the last call and the
    /// sender announced it is blocking for credit (ring it).
    #[inline]
    pub fn peer_waiting(&mut self) -> bool {
        core::mem::take(&mut self.wake_check) && self.sender_blocked()
    }

    /// True if the sender announced it is blocking for credit. Call it after a full
    /// barrier that follows the last consume (a waiter's arming has one).
    pub fn sender_blocked(&self) -> bool {
        self.r.load32(self.d.tx_waiting(), SeqCst) != 0
    }
}

/// Up to 16 bytes into two little-endian words (no `memcpy` call for a few bytes).
fn pack(data: &[u8]) -> [u64; 2] {
    let mut w = [0u64; 2];
    for (i, c) in data.chunks(8).take(2).enumerate() {
        w[i] = match <[u8; 8]>::try_from(c) {
            Ok(a) => u64::from_le_bytes(a),
            Err(_) => c.iter().rev().fold(0, |x, &b| x << 8 | u64::from(b)),
        };
    }
    w
}

/// The inverse of [`pack`] for `dst.len() <= 16` bytes.
fn unpack(w: [u64; 2], dst: &mut [u8]) {
    for (i, c) in dst.chunks_mut(8).take(2).enumerate() {
        match <&mut [u8; 8]>::try_from(&mut *c) {
            Ok(a) => *a = w[i].to_le_bytes(),
            Err(_) => c
                .iter_mut()
                .enumerate()
                .for_each(|(k, b)| *b = (w[i] >> (8 * k)) as u8),
        }
    }
}
