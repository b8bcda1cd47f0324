//! What the clients were told, and so what no crash may take back.
//!
//! An answer is *acknowledged* once it went out: a 2xx whose record (or, for an answer with no
//! record of its own, everything logged before it) became durable through a `Wal::step`, a
//! refusal at once. The ledger learns facts from acknowledged answers' bytes, as a client
//! would (a replayed answer after a restart acknowledges what it says just as well):
//! deals created and ended, holds reserved (with their latest acknowledged expiry), confirmed
//! with a quantity, released. It also keeps every resolution it has seen durably (from an
//! acknowledged answer, or in a recovered state): a hold resolves once, so a later reading may
//! forget it after its retention, never change it.
//!
//! The idempotency model (`Keys`) says what a keyed request must get when it is sent again:
//! the remembered answer, byte for byte, while the key's window is open; after a restart only
//! answers kept in a record that survived are remembered.

use std::collections::BTreeMap;

use livestock::alloc::DrawRecord;
use livestock::idempotency::StoredReply;
use livestock_core::hold::HoldState;
use livestock_core::ids::{EntrySeq, HoldSeq};
use livestock_core::waitlist::EntryState;
use serde_json::Value;

use super::workload::{Req, KEY};

/// A hold as an answer describes it.
#[derive(Clone, Debug)]
pub struct HoldBody {
    pub seq: HoldSeq,
    pub deal: String,
    pub user: String,
    pub qty: u32,
    pub state: HoldState,
    pub confirmed_qty: u32,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
}

fn ms(value: &Value, field: &str) -> Result<Option<u64>, String> {
    match &value[field] {
        Value::Null => Ok(None),
        Value::String(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.timestamp_millis() as u64))
            .map_err(|e| format!("{field}: {e}")),
        other => Err(format!("{field}: not a timestamp: {other}")),
    }
}

fn text(value: &Value, field: &str) -> Result<String, String> {
    value[field].as_str().map(str::to_owned).ok_or_else(|| format!("{field}: not a string"))
}

fn number(value: &Value, field: &str) -> Result<u64, String> {
    value[field].as_u64().ok_or_else(|| format!("{field}: not a number"))
}

pub fn parse_hold(value: &Value) -> Result<HoldBody, String> {
    let id = text(value, "hold_id")?;
    let seq = HoldSeq::from_id(&id, KEY).map_err(|e| e.to_string())?;
    let state = match text(value, "state")?.as_str() {
        "held" => HoldState::Held,
        "confirmed" => HoldState::Confirmed,
        "released" => HoldState::Released,
        "expired" => HoldState::Expired,
        other => return Err(format!("state {other:?}")),
    };
    Ok(HoldBody {
        seq,
        deal: text(value, "deal_id")?,
        user: text(value, "user_id")?,
        qty: number(value, "qty")? as u32,
        state,
        confirmed_qty: number(value, "confirmed_qty")? as u32,
        created_at_ms: ms(value, "created_at")?.ok_or("created_at missing")?,
        expires_at_ms: ms(value, "expires_at")?.ok_or("expires_at missing")?,
        resolved_at_ms: ms(value, "resolved_at")?,
    })
}

/// The holds an answer describes (a reserve's one, a cart's `holds`, a hold operation's one).
pub fn holds_in(reply: &StoredReply) -> Vec<HoldBody> {
    let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else { return Vec::new() };
    match &body["holds"] {
        Value::Array(holds) => holds.iter().filter_map(|h| parse_hold(h).ok()).collect(),
        _ => parse_hold(&body).into_iter().collect(),
    }
}

/// A waitlist entry as an answer describes it (a join's, a cancel's).
#[derive(Clone, Debug)]
pub struct EntryBody {
    pub seq: EntrySeq,
    pub deal: String,
    pub user: String,
    pub qty: u32,
    pub state: EntryState,
    pub created_at_ms: u64,
    pub resolved_at_ms: Option<u64>,
}

pub fn parse_entry(value: &Value) -> Result<EntryBody, String> {
    let id = text(value, "entry_id")?;
    let seq = EntrySeq::from_id(&id, KEY).map_err(|e| e.to_string())?;
    let state = text(value, "state")?;
    let state = EntryState::parse(&state).ok_or_else(|| format!("entry state {state:?}"))?;
    Ok(EntryBody {
        seq,
        deal: text(value, "deal_id")?,
        user: text(value, "user_id")?,
        qty: number(value, "qty")? as u32,
        state,
        created_at_ms: ms(value, "created_at")?.ok_or("created_at missing")?,
        resolved_at_ms: ms(value, "resolved_at")?,
    })
}

/// The entry an answer describes, if it is one.
pub fn entries_in(reply: &StoredReply) -> Vec<EntryBody> {
    let Ok(body) = serde_json::from_slice::<Value>(&reply.body) else { return Vec::new() };
    parse_entry(&body).into_iter().collect()
}

/// What an acknowledged join or cancel says of an entry: it waits (joined), or it was
/// cancelled at an instant.
#[derive(Clone, Debug)]
pub struct EntryFact {
    /// Entered a draw (answered `entered`), not joined a waitlist.
    pub entered: bool,
    pub deal: String,
    pub user: String,
    pub qty: u32,
    pub created_at_ms: u64,
    pub cancelled_at_ms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Held,
    Confirmed(u32),
    Released,
}

#[derive(Clone, Debug)]
pub struct HoldFact {
    pub deal: String,
    pub user: String,
    pub qty: u32,
    pub created_at_ms: u64,
    /// The latest expiry an answer promised (reserve or extend).
    pub expires_at_ms: u64,
    pub fate: Fate,
}

#[derive(Clone, Debug)]
pub struct DealFact {
    pub ended: bool,
}

/// A resolution seen durably: from an acknowledged answer or a recovered state.
#[derive(Clone, Debug)]
pub struct Resolution {
    pub state: HoldState,
    pub confirmed_qty: u32,
    pub resolved_at_ms: u64,
    pub seen: String,
}

#[derive(Default)]
pub struct Ledger {
    pub deals: BTreeMap<String, DealFact>,
    pub holds: BTreeMap<u64, HoldFact>,
    pub resolved: BTreeMap<u64, Resolution>,
    /// Waitlist entries an acknowledged answer described.
    pub entries: BTreeMap<u64, EntryFact>,
    /// Entries seen durably in a terminal state (cancelled or lapsed) at an instant: an
    /// entry's life is one way, so they read the same until forgotten.
    pub entries_ended: BTreeMap<u64, (EntryState, u64, String)>,
    /// Draws seen in a recovered (durable) state, by deal, with where: a draw's reveal never
    /// changes (its entrants, order and units; its winners once closed, and only grow before).
    pub draws: BTreeMap<String, (DrawRecord, String)>,
}

impl Ledger {
    /// Records a resolution; `Err` if the hold was seen resolved otherwise before.
    pub fn observe(
        &mut self,
        seq: HoldSeq,
        state: HoldState,
        confirmed_qty: u32,
        resolved_at_ms: u64,
        seen: &str,
    ) -> Result<(), String> {
        assert_ne!(state, HoldState::Held);
        match self.resolved.get(&seq.0) {
            Some(r) => {
                if (r.state, r.confirmed_qty, r.resolved_at_ms)
                    != (state, confirmed_qty, resolved_at_ms)
                {
                    return Err(format!(
                        "hold {} resolved twice: {:?} (qty {}, at {}) per {}, now {:?} (qty \
                         {confirmed_qty}, at {resolved_at_ms}) per {seen}",
                        seq.0, r.state, r.confirmed_qty, r.resolved_at_ms, r.seen, state
                    ));
                }
                Ok(())
            }
            None => {
                let seen = seen.to_owned();
                self.resolved
                    .insert(seq.0, Resolution { state, confirmed_qty, resolved_at_ms, seen });
                Ok(())
            }
        }
    }

    /// Records an entry's end seen durably; `Err` if it was seen to end otherwise before.
    pub fn observe_entry(
        &mut self,
        seq: EntrySeq,
        state: EntryState,
        at_ms: u64,
        seen: &str,
    ) -> Result<(), String> {
        match self.entries_ended.get(&seq.0) {
            Some((s, at, before)) if (*s, *at) != (state, at_ms) => Err(format!(
                "entry {} ended {s:?} at {at} per {before}, now {state:?} at {at_ms} per {seen}",
                seq.0
            )),
            Some(_) => Ok(()),
            None => {
                self.entries_ended.insert(seq.0, (state, at_ms, seen.to_owned()));
                Ok(())
            }
        }
    }

    /// Checks a draw record against the one seen durably before, and records it if `durable`.
    pub fn observe_draw(
        &mut self,
        deal: &str,
        draw: &DrawRecord,
        seen: &str,
        durable: bool,
    ) -> Result<(), String> {
        if let Some((before, at)) = self.draws.get(deal) {
            let same = (before.at_ms, before.units, &before.entrants, &before.order)
                == (draw.at_ms, draw.units, &draw.entrants, &draw.order);
            let winners_ok = if before.closed {
                draw.closed && draw.winners == before.winners
            } else {
                draw.winners.starts_with(&before.winners)
            };
            if !same || !winners_ok {
                return Err(format!(
                    "the draw of deal {deal} was {before:?} per {at}, now reads {draw:?}"
                ));
            }
        }
        if durable {
            self.draws.insert(deal.to_owned(), (draw.clone(), seen.to_owned()));
        }
        Ok(())
    }

    fn hold_fact(&mut self, hold: &HoldBody) -> &mut HoldFact {
        self.holds.entry(hold.seq.0).or_insert_with(|| HoldFact {
            deal: hold.deal.clone(),
            user: hold.user.clone(),
            qty: hold.qty,
            created_at_ms: hold.created_at_ms,
            expires_at_ms: hold.expires_at_ms,
            fate: Fate::Held,
        })
    }

    /// Learns what an acknowledged answer says. `Err`: the answer contradicts an earlier one.
    pub fn acknowledge(
        &mut self,
        req: &Req,
        reply: &StoredReply,
        seen: &str,
    ) -> Result<(), String> {
        if !(200..300).contains(&reply.status) {
            return Ok(());
        }
        let body: Value = serde_json::from_slice(&reply.body)
            .map_err(|e| format!("a {} answer is not JSON: {e}", reply.status))?;
        let bad = |e: String| format!("answer to {}: {e}: {body}", req.describe());
        match req {
            // A join (asked to wait) or a draw entry (any single reserve in a draw window).
            Req::Reserve { .. } | Req::CancelEntry { .. } if body.get("entry_id").is_some() => {
                let entry = parse_entry(&body).map_err(bad)?;
                let fact = self.entries.entry(entry.seq.0).or_insert_with(|| EntryFact {
                    entered: entry.state == EntryState::Entered,
                    deal: entry.deal.clone(),
                    user: entry.user.clone(),
                    qty: entry.qty,
                    created_at_ms: entry.created_at_ms,
                    cancelled_at_ms: None,
                });
                if (fact.deal.as_str(), fact.user.as_str(), fact.qty)
                    != (entry.deal.as_str(), entry.user.as_str(), entry.qty)
                {
                    return Err(bad(format!("entry {} changed deal, user or qty", entry.seq.0)));
                }
                if let Req::CancelEntry { .. } = req {
                    if entry.state != EntryState::Cancelled {
                        return Err(bad(format!("a cancel answers {:?}", entry.state)));
                    }
                    let at = entry.resolved_at_ms.ok_or_else(|| bad("no resolved_at".into()))?;
                    if fact.cancelled_at_ms.is_some_and(|before| before != at) {
                        return Err(bad(format!("entry {} cancelled twice", entry.seq.0)));
                    }
                    fact.cancelled_at_ms = Some(at);
                    self.observe_entry(entry.seq, EntryState::Cancelled, at, seen)?;
                }
            }
            Req::CancelEntry { .. } => return Err(bad("a 2xx cancel without an entry".into())),
            Req::Reserve { .. } | Req::Cart { .. } => {
                let holds = match &body["holds"] {
                    Value::Array(holds) => holds.iter().map(parse_hold).collect(),
                    _ => parse_hold(&body).map(|h| vec![h]),
                }
                .map_err(bad)?;
                for hold in holds {
                    if hold.state != HoldState::Held {
                        return Err(bad(format!("a new hold reads {:?}", hold.state)));
                    }
                    let fact = self.hold_fact(&hold);
                    if (fact.deal.as_str(), fact.qty) != (hold.deal.as_str(), hold.qty) {
                        return Err(bad(format!("hold {} changed deal or qty", hold.seq.0)));
                    }
                }
            }
            Req::Confirm { .. } | Req::Release { .. } | Req::Extend { .. } => {
                let hold = parse_hold(&body).map_err(bad)?;
                let expected = match req {
                    Req::Confirm { .. } => HoldState::Confirmed,
                    Req::Release { .. } => HoldState::Released,
                    _ => HoldState::Held,
                };
                if hold.state != expected {
                    return Err(bad(format!("the hold reads {:?}", hold.state)));
                }
                if let Req::Confirm { qty: Some(q), .. } = req {
                    if hold.confirmed_qty != *q {
                        return Err(bad(format!(
                            "confirmed {} of the {q} asked",
                            hold.confirmed_qty
                        )));
                    }
                }
                let fact = self.hold_fact(&hold);
                fact.expires_at_ms = fact.expires_at_ms.max(hold.expires_at_ms);
                let fate = match hold.state {
                    HoldState::Confirmed => Fate::Confirmed(hold.confirmed_qty),
                    HoldState::Released => Fate::Released,
                    _ => Fate::Held,
                };
                if fate != Fate::Held {
                    if fact.fate != Fate::Held && fact.fate != fate {
                        return Err(bad(format!(
                            "hold {} was acknowledged {:?}",
                            hold.seq.0, fact.fate
                        )));
                    }
                    fact.fate = fate;
                    let at = hold.resolved_at_ms.ok_or_else(|| bad("no resolved_at".into()))?;
                    self.observe(hold.seq, hold.state, hold.confirmed_qty, at, seen)?;
                }
            }
            Req::CreateDeal { id, .. } => {
                self.deals.entry(id.clone()).or_insert(DealFact { ended: false });
            }
            Req::EndDeal { deal } => {
                if body["state"] == "ended" {
                    self.deals.entry(deal.clone()).or_insert(DealFact { ended: true }).ended = true;
                }
            }
            Req::EndStream { .. } => {
                for deal in body["deals_ended"].as_array().into_iter().flatten() {
                    let id = text(deal, "id").map_err(bad)?;
                    self.deals.entry(id).or_insert(DealFact { ended: true }).ended = true;
                }
            }
            Req::Pause { .. } | Req::Resume { .. } | Req::AdjustStock { .. } => {}
        }
        Ok(())
    }
}

/// One idempotency key as the model knows it.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub req: Req,
    pub key: String,
    pub reply: StoredReply,
    pub seen_ms: u64,
    /// The record that carries the answer, if the request logged one.
    pub logged: Option<u64>,
    /// The answer went out (see the module docs).
    pub acked: bool,
}

/// The model of the node's idempotency table: (scope, key) -> the remembered answer.
#[derive(Default)]
pub struct Keys {
    pub entries: BTreeMap<(String, String), KeyEntry>,
    pub window_ms: u64,
}

impl Keys {
    /// The remembered answer a request with this key must get now, if any.
    pub fn expected(&self, scope: &str, key: &str, now_ms: u64) -> Option<&KeyEntry> {
        self.entries
            .get(&(scope.to_owned(), key.to_owned()))
            .filter(|e| e.seen_ms.saturating_add(self.window_ms) > now_ms)
    }

    /// After a restart that recovered up to `last_lsn`: only answers in surviving records are
    /// remembered. Returns the entries forgotten that had been acknowledged as successes
    /// within their window: their retries must still get the same bytes.
    pub fn restart(&mut self, last_lsn: u64, now_ms: u64) -> Vec<KeyEntry> {
        let window_ms = self.window_ms;
        let mut forgotten = Vec::new();
        self.entries.retain(|_, e| {
            let open = e.seen_ms.saturating_add(window_ms) > now_ms;
            let kept = open && e.logged.is_some_and(|lsn| lsn <= last_lsn);
            if !kept && open && e.acked && (200..300).contains(&e.reply.status) {
                forgotten.push(e.clone());
            }
            kept
        });
        forgotten
    }
}
