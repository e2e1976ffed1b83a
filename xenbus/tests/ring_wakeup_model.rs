//! Exhaustive interleaving check that the push-and-check / final-check pair
//! (`RING_PUSH_*_AND_CHECK_NOTIFY` / `RING_FINAL_CHECK_FOR_*`) never loses a
//! wake-up, and that it does lose one when the fence or the re-check is
//! removed.
//!
//! The model has the four shared words (`req_prod`, `req_event`, `rsp_prod`,
//! `rsp_event`) and two threads that follow the ring code step by step: a
//! frontend that publishes `K` requests (push-and-check each) and then waits
//! for all responses (final check, sleep until an event), and a backend that
//! consumes, answers (push-and-check), final-checks and sleeps. Memory is
//! x86-TSO: each thread's stores go through a FIFO store buffer that drains to
//! memory at arbitrary points, loads see the thread's own buffered stores
//! first, and a full fence (`mb`, our `fence(SeqCst)`) waits for the buffer to
//! drain. A depth-first search visits every reachable state; a state with no
//! enabled step where the frontend has not received every response is a lost
//! wake-up (both sides asleep with work pending and no event in flight).
//! The notify decision is the crate's own [`notify_needed`].

use std::collections::HashSet;

use xenbus::ring::notify_needed;

const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 1;
const RSP_PROD: usize = 2;
const RSP_EVENT: usize = 3;

#[derive(Clone, Copy, Debug)]
struct Variant {
    /// Full fence in push-and-check, between the producer store and the
    /// event load.
    push_fence: bool,
    /// Full fence in the final check, between the event store and the
    /// re-check load.
    final_fence: bool,
    /// Re-check for work after setting the event index.
    recheck: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FrontPc {
    Push,
    PushFence,
    PushCheck,
    Poll,
    SetEvent,
    FinalFence,
    Recheck,
    Sleep,
    Done,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum BackPc {
    Poll,
    Respond,
    PushFence,
    PushCheck,
    SetEvent,
    FinalFence,
    Recheck,
    Sleep,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    mem: [u32; 4],
    fbuf: Vec<(usize, u32)>,
    bbuf: Vec<(usize, u32)>,
    fpc: FrontPc,
    bpc: BackPc,
    // Front private state.
    req_prod_pvt: u32,
    req_published: u32,
    rsp_cons: u32,
    // Back private state.
    req_cons: u32,
    rsp_prod_pvt: u32,
    rsp_published: u32,
    // Pending events (an event channel is a pending bit).
    ev_front: bool,
    ev_back: bool,
}

fn load(mem: &[u32; 4], buf: &[(usize, u32)], var: usize) -> u32 {
    buf.iter()
        .rev()
        .find(|(v, _)| *v == var)
        .map_or(mem[var], |(_, val)| *val)
}

/// Every state reachable in one step from `s`.
fn successors(s: &State, v: Variant, k: u32, out: &mut Vec<State>) {
    // Store-buffer drains.
    if let Some(&(var, val)) = s.fbuf.first() {
        let mut n = s.clone();
        n.fbuf.remove(0);
        n.mem[var] = val;
        out.push(n);
    }
    if let Some(&(var, val)) = s.bbuf.first() {
        let mut n = s.clone();
        n.bbuf.remove(0);
        n.mem[var] = val;
        out.push(n);
    }

    // Frontend step.
    let mut n = s.clone();
    let front_moved = match s.fpc {
        FrontPc::Push => {
            // Queue one request and store `req_prod` (release store).
            n.req_prod_pvt = s.req_prod_pvt.wrapping_add(1);
            n.fbuf.push((REQ_PROD, n.req_prod_pvt));
            n.fpc = if v.push_fence {
                FrontPc::PushFence
            } else {
                FrontPc::PushCheck
            };
            true
        }
        FrontPc::PushFence | FrontPc::FinalFence if !s.fbuf.is_empty() => false,
        FrontPc::PushFence => {
            n.fpc = FrontPc::PushCheck;
            true
        }
        FrontPc::PushCheck => {
            let event = load(&s.mem, &s.fbuf, REQ_EVENT);
            if notify_needed(s.req_published, s.req_prod_pvt, event) {
                n.ev_back = true;
            }
            n.req_published = s.req_prod_pvt;
            n.fpc = if n.req_prod_pvt == k {
                FrontPc::Poll
            } else {
                FrontPc::Push
            };
            true
        }
        FrontPc::Poll => {
            let rsp_prod = load(&s.mem, &s.fbuf, RSP_PROD);
            if rsp_prod != s.rsp_cons {
                n.rsp_cons = rsp_prod;
                n.fpc = if rsp_prod == k {
                    FrontPc::Done
                } else {
                    FrontPc::Poll
                };
            } else {
                n.fpc = FrontPc::SetEvent;
            }
            true
        }
        FrontPc::SetEvent => {
            n.fbuf.push((RSP_EVENT, s.rsp_cons.wrapping_add(1)));
            n.fpc = if v.final_fence {
                FrontPc::FinalFence
            } else {
                FrontPc::Recheck
            };
            true
        }
        FrontPc::FinalFence => {
            n.fpc = FrontPc::Recheck;
            true
        }
        FrontPc::Recheck => {
            let rsp_prod = load(&s.mem, &s.fbuf, RSP_PROD);
            n.fpc = if v.recheck && rsp_prod != s.rsp_cons {
                FrontPc::Poll
            } else {
                FrontPc::Sleep
            };
            true
        }
        FrontPc::Sleep if s.ev_front => {
            n.ev_front = false;
            n.fpc = FrontPc::Poll;
            true
        }
        FrontPc::Sleep | FrontPc::Done => false,
    };
    if front_moved {
        out.push(n);
    }

    // Backend step.
    let mut n = s.clone();
    let back_moved = match s.bpc {
        BackPc::Poll => {
            let req_prod = load(&s.mem, &s.bbuf, REQ_PROD);
            if req_prod != s.req_cons {
                n.req_cons = req_prod;
                n.bpc = BackPc::Respond;
            } else {
                n.bpc = BackPc::SetEvent;
            }
            true
        }
        BackPc::Respond => {
            // Answer everything consumed and store `rsp_prod`.
            n.rsp_prod_pvt = s.req_cons;
            n.bbuf.push((RSP_PROD, n.rsp_prod_pvt));
            n.bpc = if v.push_fence {
                BackPc::PushFence
            } else {
                BackPc::PushCheck
            };
            true
        }
        BackPc::PushFence | BackPc::FinalFence if !s.bbuf.is_empty() => false,
        BackPc::PushFence => {
            n.bpc = BackPc::PushCheck;
            true
        }
        BackPc::PushCheck => {
            let event = load(&s.mem, &s.bbuf, RSP_EVENT);
            if notify_needed(s.rsp_published, s.rsp_prod_pvt, event) {
                n.ev_front = true;
            }
            n.rsp_published = s.rsp_prod_pvt;
            n.bpc = BackPc::Poll;
            true
        }
        BackPc::SetEvent => {
            n.bbuf.push((REQ_EVENT, s.req_cons.wrapping_add(1)));
            n.bpc = if v.final_fence {
                BackPc::FinalFence
            } else {
                BackPc::Recheck
            };
            true
        }
        BackPc::FinalFence => {
            n.bpc = BackPc::Recheck;
            true
        }
        BackPc::Recheck => {
            let req_prod = load(&s.mem, &s.bbuf, REQ_PROD);
            n.bpc = if v.recheck && req_prod != s.req_cons {
                BackPc::Poll
            } else {
                BackPc::Sleep
            };
            true
        }
        BackPc::Sleep if s.ev_back => {
            n.ev_back = false;
            n.bpc = BackPc::Poll;
            true
        }
        BackPc::Sleep => false,
    };
    if back_moved {
        out.push(n);
    }
}

struct Outcome {
    states: usize,
    finals: usize,
    lost: Option<State>,
}

fn explore(v: Variant, k: u32, start: u32) -> Outcome {
    let init = State {
        // As the frontend initialises the ring at `start`.
        mem: [start, start.wrapping_add(1), start, start.wrapping_add(1)],
        fbuf: Vec::new(),
        bbuf: Vec::new(),
        fpc: FrontPc::Push,
        bpc: BackPc::Poll,
        req_prod_pvt: start,
        req_published: start,
        rsp_cons: start,
        req_cons: start,
        rsp_prod_pvt: start,
        rsp_published: start,
        ev_front: false,
        ev_back: false,
    };
    let k = start.wrapping_add(k);
    let mut seen = HashSet::new();
    let mut stack = vec![init];
    let mut next = Vec::new();
    let mut out = Outcome {
        states: 0,
        finals: 0,
        lost: None,
    };
    while let Some(s) = stack.pop() {
        if !seen.insert(s.clone()) {
            continue;
        }
        out.states += 1;
        next.clear();
        successors(&s, v, k, &mut next);
        if next.is_empty() {
            out.finals += 1;
            if s.fpc != FrontPc::Done && out.lost.is_none() {
                out.lost = Some(s.clone());
            }
        }
        stack.append(&mut next);
    }
    out
}

const CORRECT: Variant = Variant {
    push_fence: true,
    final_fence: true,
    recheck: true,
};

#[test]
fn fence_and_recheck_never_lose_a_wakeup() {
    for k in 1..=3 {
        for start in [0, 0xFFFF_FFFE] {
            let o = explore(CORRECT, k, start);
            assert!(o.finals > 0);
            assert!(
                o.lost.is_none(),
                "lost wake-up with {k} requests from {start:#x}: {:?}",
                o.lost
            );
            eprintln!(
                "k={k} start={start:#x}: {} states, {} final, none lost",
                o.states, o.finals
            );
        }
    }
}

fn assert_broken(v: Variant, what: &str) {
    let o = explore(v, 2, 0);
    let lost = o
        .lost
        .unwrap_or_else(|| panic!("the model must catch {what}"));
    eprintln!("{what}: lost wake-up in {lost:?}");
}

#[test]
fn without_push_fence_a_wakeup_is_lost() {
    assert_broken(
        Variant {
            push_fence: false,
            ..CORRECT
        },
        "a missing fence in push-and-check",
    );
}

#[test]
fn without_final_check_fence_a_wakeup_is_lost() {
    assert_broken(
        Variant {
            final_fence: false,
            ..CORRECT
        },
        "a missing fence in the final check",
    );
}

#[test]
fn without_recheck_a_wakeup_is_lost() {
    assert_broken(
        Variant {
            recheck: false,
            ..CORRECT
        },
        "a missing re-check",
    );
}
