//! Services: request queues, offers (round robin), credit windows and
//! confirmations of acknowledging workers.
//!
//! | command | fields | answer |
//! |---|---|---|
//! | SERVICE SEND | address (service), subject, tracker, timeout, content | none (ERROR 300 if the queue is full) |
//! | SERVICE OFFER | address (service), pattern | OK (ERROR 300 for an invalid pattern) |
//! | CREDIT | amount | none: acknowledged mode, window += amount |
//! | CONFIRM | tracker (`"4"` or `"4,5,7"`), status | none (ERROR 300 without CREDIT first) |
//!
//! A CONFIRM whose tracker starts with `maintenance:` is a maint/1 command,
//! handled in `clients.rs`; one starting with `delay:` a delay/1 command,
//! handled in `delayed.rs`.
//!
//! A request goes to the first offer, in list order, whose pattern matches
//! its subject and whose client can take one more (window, maintenance);
//! that offer then moves to the end of the list. Requests wait in arrival
//! order, grouped by subject: dispatch looks at the oldest request of each
//! subject, so requests of one subject that nobody can take now cost one
//! look per dispatch, not one per request. A subject that no offer matches
//! at all is parked and looked at again only when a new offer arrives.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

use regex::Regex;

use super::clients::{Client, Unconfirmed};
use super::{compile, deadline, limits_hit, ClientId, Core, Custody, Held, HeldId, Journal};
use super::{Kind, OfferInfo, Outgoing, Removal, ServiceInfo, ServiceStats};
use crate::mlm::codec::status;
use crate::mlm::{Content, Message};

/// What every maint/1 command's tracker starts with (and no
/// acknowledgement's does: those are digits and commas).
const MAINTENANCE_PREFIX: &str = "maintenance:";

/// The sender of what the broker mails itself (dead letters, error
/// replies to requesters of poison requests).
pub(super) const BROKER_SENDER: &str = "alaska-broker";

/// One SERVICE OFFER.
pub(super) struct Offer {
    pub(super) client: ClientId,
    pattern: Regex,
}

/// The requests of one subject, oldest first (by id: new ones go to the
/// back, one coming back is put in its place).
struct Group {
    queue: VecDeque<Held>,
    /// No offer matches the subject: not in `ready` until one does.
    parked: bool,
}

/// One service: its offers and its queue.
#[derive(Default)]
pub(super) struct Service {
    /// Round-robin order: the offer used last is at the end.
    pub(super) offers: Vec<Offer>,
    groups: HashMap<String, Group>,
    /// The oldest request of each group that is not parked -> its subject,
    /// so iterating gives the groups in arrival order of their heads.
    ready: BTreeMap<HeldId, String>,
    /// Requests queued.
    pub(super) count: usize,
    /// Content bytes queued.
    pub(super) bytes: usize,
    /// SERVICE DELIVERs made, redeliveries included (for the console's
    /// per-service rate; restarts from zero if the service is forgotten).
    pub(super) dispatched: u64,
    /// Requests that came back to the queue.
    pub(super) redelivered: u64,
    /// Requests dead-lettered past the delivery limit.
    pub(super) poisoned: u64,
}

impl Service {
    /// Nothing offered, nothing queued: the service can be forgotten.
    pub(super) fn is_idle(&self) -> bool {
        self.offers.is_empty() && self.count == 0
    }

    fn matched(&self, subject: &str) -> bool {
        self.offers.iter().any(|o| o.pattern.is_match(subject))
    }

    /// Queues a request in arrival order (by id), also one coming back.
    fn push(&mut self, req: Held) {
        self.count += 1;
        self.bytes += req.bytes();
        let Some(group) = self.groups.get_mut(&req.subject) else {
            let parked = !self.matched(&req.subject);
            if !parked {
                self.ready.insert(req.id, req.subject.clone());
            }
            let subject = req.subject.clone();
            self.groups.insert(
                subject,
                Group {
                    queue: VecDeque::from([req]),
                    parked,
                },
            );
            return;
        };
        match group.queue.back() {
            Some(last) if last.id > req.id => {
                // One coming back: in its place by age.
                let old_head = group.queue[0].id;
                let at = group.queue.partition_point(|h| h.id < req.id);
                let id = req.id;
                let subject = (at == 0 && !group.parked).then(|| req.subject.clone());
                group.queue.insert(at, req);
                if let Some(subject) = subject {
                    self.ready.remove(&old_head);
                    self.ready.insert(id, subject);
                }
            }
            _ => group.queue.push_back(req),
        }
    }

    /// Takes the oldest request of the ready group whose head is `head`.
    fn pop(&mut self, head: HeldId) -> Option<Held> {
        let subject = self.ready.remove(&head)?;
        let group = self.groups.get_mut(&subject)?;
        let req = group.queue.pop_front()?;
        self.count -= 1;
        self.bytes -= req.bytes();
        match group.queue.front() {
            Some(next) => {
                self.ready.insert(next.id, subject);
            }
            None => {
                self.groups.remove(&subject);
            }
        }
        Some(req)
    }

    /// Takes request `id` of `subject` out of the queue, wherever it is.
    fn remove(&mut self, subject: &str, id: HeldId) -> Option<Held> {
        let group = self.groups.get_mut(subject)?;
        let at = group.queue.partition_point(|h| h.id < id);
        if group.queue.get(at).is_none_or(|h| h.id != id) {
            return None;
        }
        let req = group.queue.remove(at)?;
        self.count -= 1;
        self.bytes -= req.bytes();
        if at == 0 && !group.parked {
            self.ready.remove(&id);
            if let Some(next) = group.queue.front() {
                self.ready.insert(next.id, subject.to_string());
            }
        }
        if group.queue.is_empty() {
            self.groups.remove(subject);
        }
        Some(req)
    }

    /// Every queued request, oldest first (for the admin API's peek).
    pub(super) fn queued(&self) -> Vec<&Held> {
        let mut all: Vec<&Held> = self.groups.values().flat_map(|g| g.queue.iter()).collect();
        all.sort_by_key(|h| h.id);
        all
    }

    /// Takes every queued request out (the admin API's purge).
    pub(super) fn take_all(&mut self) -> Vec<Held> {
        self.ready.clear();
        self.count = 0;
        self.bytes = 0;
        let mut all: Vec<Held> = self.groups.drain().flat_map(|(_, g)| g.queue).collect();
        all.sort_by_key(|h| h.id);
        all
    }

    /// Parks the ready group whose head is `head`: no offer matches it.
    fn park(&mut self, head: HeldId) {
        if let Some(subject) = self.ready.remove(&head) {
            if let Some(g) = self.groups.get_mut(&subject) {
                g.parked = true;
            }
        }
    }

    /// Adds an offer; the parked subjects it matches are ready again.
    fn add_offer(&mut self, client: ClientId, pattern: Regex) {
        for (subject, g) in self.groups.iter_mut() {
            if g.parked && pattern.is_match(subject) {
                g.parked = false;
                if let Some(head) = g.queue.front() {
                    self.ready.insert(head.id, subject.clone());
                }
            }
        }
        self.offers.push(Offer { client, pattern });
    }

    /// Removes every offer of `client`. Subjects only it matched are
    /// parked by the next dispatch that looks at them.
    pub(super) fn remove_offers_of(&mut self, client: &ClientId) {
        self.offers.retain(|o| o.client != *client);
    }
}

impl<J: Journal> Core<J> {
    /// SERVICE SEND: queues the request (or refuses it with ERROR 300 when
    /// the queue is full); it is dispatched at the next flush.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_service_send(
        &mut self,
        id: ClientId,
        service: String,
        subject: String,
        tracker: String,
        timeout: u32,
        content: Content,
        delay: Option<u64>,
        now: Instant,
    ) {
        if let Some(ms) = delay {
            let req = Held {
                id: 0,
                sender: self.address_of(&id),
                subject,
                tracker,
                content,
                expires: None,
                deliveries: 0,
            };
            return self.hold_delayed(id, service, req, timeout, ms, now);
        }
        let mut req = Held {
            id: 0,
            sender: self.address_of(&id),
            subject,
            tracker,
            content,
            expires: deadline(now, timeout),
            deliveries: 0,
        };
        let limit = self.cfg.service_queue_limit;
        let (count, bytes) = self
            .services
            .get(&service)
            .map_or((0, 0), |s| (s.count, s.bytes));
        if limits_hit(&limit, count, bytes, req.bytes()) {
            tracing::warn!(
                "service {service:?} queue full ({count} requests, {bytes} bytes): request from {:?} refused",
                req.sender
            );
            self.counters.requests_refused += 1;
            self.reply_error(
                &id,
                status::FAILED,
                &format!("service {service} queue full"),
            );
            return;
        }
        req.id = self.take_id();
        self.journal.stored(Kind::Request, &service, &req, true);
        self.counters.requests_queued += 1;
        self.enqueue(&service, req);
        self.touch_service(&service);
    }

    /// SERVICE OFFER: registers the offer (ERROR 300 for a pattern that is
    /// not a valid regular expression); waiting requests it matches are
    /// dispatched at the next flush.
    pub(super) fn on_service_offer(&mut self, id: ClientId, service: String, pattern: &str) {
        let re = match compile(pattern) {
            Ok(re) => re,
            Err(e) => return self.reply_error(&id, status::FAILED, &e),
        };
        if let Some(c) = self.clients.get_mut(&id) {
            c.offers.push(service.clone());
        }
        self.services
            .entry(service.clone())
            .or_default()
            .add_offer(id.clone(), re);
        self.reply_ok(&id);
        self.touch_service(&service);
    }

    /// CREDIT: acknowledged mode from now on, and a wider window.
    pub(super) fn on_credit(&mut self, id: ClientId, amount: u16) {
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        c.acked = true;
        c.credit += u64::from(amount);
        for s in c.offers.clone() {
            self.touch_service(&s);
        }
    }

    /// CONFIRM: forgets the confirmed requests (one number, or several
    /// separated by commas) and frees their window slots.
    pub(super) fn on_confirm(&mut self, id: ClientId, tracker: &str) {
        // maint/1: never an acknowledgement, and allowed without CREDIT.
        if tracker.starts_with(MAINTENANCE_PREFIX) {
            return self.on_maintenance_command(id, tracker);
        }
        // delay/1: never an acknowledgement either.
        if tracker.starts_with(crate::mlm::DELAY_PREFIX) {
            return self.on_delay_command(id, tracker);
        }
        let Some(c) = self.clients.get_mut(&id) else {
            return;
        };
        if !c.acked {
            tracing::warn!("CONFIRM from {:?}, which never sent CREDIT", c.address);
            return self.reply_error(&id, status::FAILED, "CONFIRM needs CREDIT first (ack/1)");
        }
        let mut services: Vec<String> = Vec::new();
        for part in tracker.split(',') {
            match part
                .trim()
                .parse::<u64>()
                .ok()
                .and_then(|seq| c.unconfirmed.remove(&seq))
            {
                Some(u) => {
                    self.journal
                        .removed(Kind::Request, u.req.id, Removal::Confirmed);
                    self.counters.requests_confirmed += 1;
                    if !services.contains(&u.service) {
                        services.push(u.service);
                    }
                }
                None => tracing::warn!(
                    "CONFIRM {part:?} from {:?} matches nothing; ignored",
                    c.address
                ),
            }
        }
        for s in services {
            self.touch_service(&s);
        }
    }

    /// Puts a request in its queue and its timeout in the expiry index.
    pub(super) fn enqueue(&mut self, service: &str, req: Held) {
        if let Some(t) = req.expires {
            self.request_expiry
                .insert((t, req.id), (service.to_string(), req.subject.clone()));
        }
        match self.services.get_mut(service) {
            Some(svc) => svc.push(req),
            None => {
                let mut svc = Service::default();
                svc.push(req);
                self.services.insert(service.to_string(), svc);
            }
        }
    }

    /// A request that was out comes back (its worker went away, or the
    /// delivery failed): queued again in its place by age; or, when that
    /// many workers already went away holding it, dead-lettered.
    pub(super) fn requeue(&mut self, service: &str, req: Held, now: Instant) {
        let max = self.cfg.max_deliveries;
        if max > 0 && req.deliveries >= max {
            return self.poisoned(service, req, now);
        }
        self.journal.stored(Kind::Request, service, &req, false);
        self.counters.requests_redelivered += 1;
        if let Some(s) = self.services.get_mut(service) {
            s.redelivered += 1;
        }
        self.enqueue(service, req);
        self.touch_service(service);
    }

    /// Gives queued requests of `name` to matching offers that can take
    /// them, round robin, oldest first.
    pub(super) fn dispatch(&mut self, name: &str, now: Instant) {
        let Some(svc) = self.services.get_mut(name) else {
            return;
        };
        loop {
            if svc.ready.is_empty() {
                break;
            }
            let clients = &self.clients;
            let can_take = |o: &Offer| clients.get(&o.client).is_some_and(Client::can_take);
            if !svc.offers.iter().any(can_take) {
                break;
            }
            let mut pick = None;
            let mut unmatched = Vec::new();
            for (&head, subject) in &svc.ready {
                if let Some(pos) = svc
                    .offers
                    .iter()
                    .position(|o| o.pattern.is_match(subject) && can_take(o))
                {
                    pick = Some((head, pos));
                    break;
                }
                if !svc.matched(subject) {
                    unmatched.push(head);
                }
            }
            for head in unmatched {
                svc.park(head);
            }
            let Some((head, pos)) = pick else {
                break;
            };
            let Some(mut req) = svc.pop(head) else {
                break;
            };
            svc.dispatched += 1;
            if let Some(t) = req.expires {
                self.request_expiry.remove(&(t, req.id));
            }
            if req.expired(now) {
                tracing::info!(
                    "request {:?} from {:?} for {name:?} expired in the queue; dropped",
                    req.subject,
                    req.sender
                );
                self.counters.requests_expired += 1;
                self.journal
                    .removed(Kind::Request, req.id, Removal::Expired);
                continue;
            }
            let offer = svc.offers.remove(pos);
            let worker = offer.client.clone();
            svc.offers.push(offer);
            let Some(c) = self.clients.get_mut(&worker) else {
                continue;
            };
            let custody = Custody {
                id: req.id,
                expires: req.expires,
                acked: c.acked,
                from: None,
            };
            let msg = if c.acked {
                // Kept until confirmed: the delivery carries a copy. The
                // count is kept with it (stored, so a crash of the broker
                // with the worker, an embedded one say, still counts).
                req.deliveries = req.deliveries.saturating_add(1);
                self.journal.stored(Kind::Request, name, &req, false);
                let msg = Message::ServiceDeliver {
                    sender: req.sender.clone(),
                    address: name.to_string(),
                    subject: req.subject.clone(),
                    tracker: req.tracker.clone(),
                    content: req.content.clone(),
                };
                self.journal.delivered_unconfirmed(req.id);
                c.seq += 1;
                c.unconfirmed.insert(
                    c.seq,
                    Unconfirmed {
                        service: name.to_string(),
                        req,
                    },
                );
                msg
            } else {
                self.journal
                    .removed(Kind::Request, req.id, Removal::Delivered);
                Message::ServiceDeliver {
                    sender: req.sender,
                    address: name.to_string(),
                    subject: req.subject,
                    tracker: req.tracker,
                    content: req.content,
                }
            };
            self.counters.requests_dispatched += 1;
            self.out.push(Outgoing {
                to: worker,
                msg,
                custody: Some(custody),
            });
        }
    }

    /// A poison request: every one of `deliveries` workers it was given to
    /// went away without confirming it (died, was killed, stopped
    /// answering). It is not delivered again: a dead letter goes to the
    /// error mailbox (the worker's format: the report, then the request's
    /// first frame) and a requester that waits (a tracker) gets an error
    /// reply, so one request cannot take every worker down in turn.
    pub(super) fn poisoned(&mut self, service: &str, req: Held, now: Instant) {
        self.counters.requests_poisoned += 1;
        if let Some(s) = self.services.get_mut(service) {
            s.poisoned += 1;
        }
        self.journal
            .removed(Kind::Request, req.id, Removal::Poisoned);
        let text = format!(
            "dead letter: poison request {:?} for service {service:?} from {:?} (tracker {:?}): \
             delivered {} times, and each time its worker went away without confirming it \
             (it died, was killed or stopped answering); not delivered again \
             (mlm_server/service/max_deliveries = {})",
            req.subject, req.sender, req.tracker, req.deliveries, self.cfg.max_deliveries
        );
        tracing::error!("{text}");
        let first = req.content.first().cloned().unwrap_or_default();
        // The requester that waits, if any: the original one inside an
        // alaska envelope (a request a worker sent back for a retry).
        let (to, tracker) = match crate::worker::outcomes::Envelope::decode(&req.tracker) {
            Some(env) => (env.sender, env.tracker),
            None => (req.sender.clone(), req.tracker.clone()),
        };
        // The third frame: what a replay needs, in the workers' dead-letter
        // format (docs/PROTOCOL-NOTES.md).
        let or_null = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let meta = serde_json::json!({
            "format": crate::worker::outcomes::DEAD_LETTER_FORMAT,
            "address": service,
            "subject": req.subject,
            "requester": or_null(&to),
            "tracker": or_null(&tracker),
            "outcome": "poison",
            "reason": text,
            "attempts": req.deliveries,
            "deliveries": req.deliveries,
            "hops": 0,
            "when": crate::worker::outcomes::rfc3339(std::time::SystemTime::now()),
            "frames": req.content.iter().map(|f| crate::worker::outcomes::frame_json(f)).collect::<Vec<_>>(),
        });
        let report = Held {
            id: self.take_id(),
            sender: BROKER_SENDER.into(),
            subject: req.subject.clone(),
            tracker: String::new(),
            content: vec![
                text.clone().into_bytes(),
                first,
                meta.to_string().into_bytes(),
            ],
            expires: None,
            deliveries: 0,
        };
        let mailbox = self.cfg.dead_letters.clone();
        if !mailbox.is_empty() {
            self.post_mail(mailbox, report, now);
        }
        if !to.is_empty() && !tracker.is_empty() {
            let reply = Held {
                id: self.take_id(),
                sender: BROKER_SENDER.into(),
                subject: format!("ERROR:{}", req.subject),
                tracker,
                content: vec![text.into_bytes()],
                expires: None,
                deliveries: 0,
            };
            self.post_mail(to, reply, now);
        }
    }

    /// Drops the queued requests whose timeout has passed.
    pub(super) fn expire_requests(&mut self, now: Instant) {
        let mut dropped: Vec<(String, usize)> = Vec::new();
        while let Some(entry) = self.request_expiry.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((_, id), (service, subject)) = entry.remove_entry();
            let Some(svc) = self.services.get_mut(&service) else {
                continue;
            };
            if svc.remove(&subject, id).is_some() {
                self.counters.requests_expired += 1;
                self.journal.removed(Kind::Request, id, Removal::Expired);
                match dropped.iter_mut().find(|(s, _)| *s == service) {
                    Some((_, n)) => *n += 1,
                    None => dropped.push((service, 1)),
                }
            }
        }
        for (service, n) in dropped {
            tracing::info!("{n} request(s) for {service:?} expired in the queue; dropped");
        }
    }

    /// The figures of every service that has offers or queued requests,
    /// sorted by name. One pass over the clients for the unconfirmed
    /// counts, so it costs O(services + offers + clients), not a product.
    pub(super) fn service_stats(&self) -> Vec<ServiceStats> {
        let mut unconfirmed: HashMap<&str, usize> = HashMap::new();
        for c in self.clients.values() {
            for u in c.unconfirmed.values() {
                *unconfirmed.entry(u.service.as_str()).or_default() += 1;
            }
        }
        let mut list: Vec<ServiceStats> = self
            .services
            .iter()
            .filter(|(_, s)| !s.is_idle())
            .map(|(name, s)| {
                let mut workers: Vec<&ClientId> = s.offers.iter().map(|o| &o.client).collect();
                workers.sort();
                workers.dedup();
                let in_maintenance = workers
                    .iter()
                    .filter(|id| self.clients.get(**id).is_some_and(|c| c.maintenance))
                    .count();
                ServiceStats {
                    name: name.clone(),
                    queued: s.count,
                    bytes: s.bytes,
                    dispatched: s.dispatched,
                    redelivered: s.redelivered,
                    poisoned: s.poisoned,
                    offers: s.offers.len(),
                    unconfirmed: unconfirmed.get(name.as_str()).copied().unwrap_or(0),
                    workers: workers.len(),
                    workers_in_maintenance: in_maintenance,
                }
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// Every service with offers or queued requests, sorted by name, with
    /// its offers in round-robin order and the subjects nobody matches.
    pub fn services(&self) -> Vec<ServiceInfo> {
        self.service_stats()
            .into_iter()
            .map(|stats| {
                let svc = &self.services[&stats.name];
                let offers = svc
                    .offers
                    .iter()
                    .map(|o| OfferInfo {
                        address: self.address_of(&o.client),
                        pattern: o.pattern.as_str().to_string(),
                        maintenance: self.clients.get(&o.client).is_some_and(|c| c.maintenance),
                    })
                    .collect();
                let mut unmatched: Vec<String> = svc
                    .groups
                    .iter()
                    .filter(|(subject, g)| g.parked || !svc.matched(subject))
                    .map(|(subject, _)| subject.clone())
                    .collect();
                unmatched.sort();
                ServiceInfo {
                    stats,
                    offers,
                    unmatched_subjects: unmatched,
                }
            })
            .collect()
    }
}
