//! Plain counters of what the core did, and a snapshot of what it holds,
//! for metrics (Prometheus) and the admin API: the core counts where the
//! events happen; whoever exports them reads [`super::Core::stats`].

/// Monotonic counters, since the broker started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Commands handled (malformed ones included).
    pub commands: u64,
    /// Commands that could not be decoded, or only a broker sends.
    pub malformed: u64,
    /// CONNECTION OPENs accepted.
    pub clients_opened: u64,
    /// Clients expired for silence.
    pub clients_expired: u64,
    /// Service requests accepted into a queue.
    pub requests_queued: u64,
    /// Service requests refused (queue full).
    pub requests_refused: u64,
    /// SERVICE DELIVERs made (redeliveries included).
    pub requests_dispatched: u64,
    /// Requests that came back to their queue: the worker went away
    /// unconfirmed, or the delivery could not be sent.
    pub requests_redelivered: u64,
    /// Requests past the delivery limit, dead-lettered instead of
    /// delivered again (poison requests).
    pub requests_poisoned: u64,
    /// Requests confirmed by acknowledging workers.
    pub requests_confirmed: u64,
    /// Requests whose timeout passed in the queue.
    pub requests_expired: u64,
    /// Mail stored for an absent (or unreachable) owner.
    pub mail_stored: u64,
    /// MAILBOX DELIVERs made.
    pub mail_delivered: u64,
    /// Mail refused (mailbox full).
    pub mail_refused: u64,
    /// Mail whose timeout passed in the mailbox.
    pub mail_expired: u64,
    /// Mail dropped with a reclaimed mailbox.
    pub mail_reclaimed: u64,
    /// Mailboxes reclaimed (their owner stayed away past the expiry).
    pub mailboxes_reclaimed: u64,
    /// STREAM SENDs received.
    pub stream_messages: u64,
    /// STREAM DELIVERs made.
    pub stream_deliveries: u64,
    /// Requests the broker queued in its own name (a dead letter
    /// replayed through the admin API).
    pub requests_replayed: u64,
    /// Queued requests purged through the admin API.
    pub requests_purged: u64,
    /// Stored mail deleted or purged through the admin API.
    pub mail_removed: u64,
    /// maint/1 commands received (`CONFIRM tracker="maintenance:…"`),
    /// unknown ones included.
    pub maintenance_commands: u64,
    /// SERVICE SENDs held for a delay (delay/1).
    pub requests_delayed: u64,
    /// Delayed requests cancelled through the admin API.
    pub delayed_cancelled: u64,
    /// Schedule fires (each queued one request, unless its queue was full).
    pub schedule_fires: u64,
}

/// One service as the core sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceStats {
    /// Service name.
    pub name: String,
    /// Requests waiting in its queue.
    pub queued: usize,
    /// Content bytes waiting in its queue.
    pub bytes: usize,
    /// SERVICE DELIVERs made for it, redeliveries included.
    pub dispatched: u64,
    /// Its requests that came back to the queue.
    pub redelivered: u64,
    /// Its requests dead-lettered past the delivery limit.
    pub poisoned: u64,
    /// Offers (one per client and SERVICE OFFER).
    pub offers: usize,
    /// Requests given to acknowledging workers and not yet confirmed.
    pub unconfirmed: usize,
    /// Distinct clients offering it.
    pub workers: usize,
    /// Of those, the ones in maintenance.
    pub workers_in_maintenance: usize,
}

/// Counters plus the gauges of the moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Counters since start.
    pub counters: Counters,
    /// Clients connected.
    pub clients: usize,
    /// Clients in maintenance.
    pub clients_in_maintenance: usize,
    /// Services with offers or queued requests, by name.
    pub services: Vec<ServiceStats>,
    /// Mailboxes holding mail.
    pub mailboxes: usize,
    /// Mail held in all mailboxes.
    pub mail_held: usize,
    /// Content bytes of the mail held.
    pub mail_bytes: usize,
    /// Streams with at least one reader.
    pub streams: usize,
    /// STREAM READ subscriptions.
    pub stream_readers: usize,
    /// Dead letters kept in the error mailbox
    /// (`mlm_server/service/dead_letters`).
    pub dead_letters: usize,
    /// Requests held for a delay, not yet due.
    pub delayed_requests: usize,
    /// Each schedule: name, fires since start, next due time and the due
    /// time of the last fire (ms since the epoch).
    pub schedules: Vec<(String, u64, Option<u64>, Option<u64>)>,
}

/// One service for the admin API: [`ServiceStats`] and who offers what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceInfo {
    /// The figures of the moment.
    pub stats: ServiceStats,
    /// Its offers in round-robin order (the next request tries the first).
    pub offers: Vec<OfferInfo>,
    /// Subjects waiting that no offer matches (parked).
    pub unmatched_subjects: Vec<String>,
}

/// One SERVICE OFFER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfferInfo {
    /// The offering client's address.
    pub address: String,
    /// Its subject pattern.
    pub pattern: String,
    /// Whether that client is in maintenance.
    pub maintenance: bool,
}

/// One mailbox holding mail, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// The address it holds mail for.
    pub address: String,
    /// Mails held.
    pub messages: usize,
    /// Their content bytes.
    pub bytes: usize,
    /// Whether its owner is connected now.
    pub connected: bool,
    /// How long until it is reclaimed if its owner stays away (`None`
    /// while the owner is connected).
    pub reclaim_in: Option<std::time::Duration>,
}

/// One stream, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its name.
    pub name: String,
    /// Its subscriptions, in registration order.
    pub readers: Vec<ReaderInfo>,
    /// Addresses of the clients whose last STREAM WRITE named it.
    pub writers: Vec<String>,
}

/// One STREAM READ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReaderInfo {
    /// The reading client's address.
    pub address: String,
    /// Its subject pattern.
    pub pattern: String,
}

/// One connected client, for the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// Its address (empty: anonymous).
    pub address: String,
    /// The user its connection authenticated as, with PLAIN.
    pub user: Option<String>,
    /// Services it offers.
    pub offers: Vec<String>,
    /// Streams it reads.
    pub reads: Vec<String>,
    /// Acknowledged mode, and its window.
    pub credit: Option<u64>,
    /// Requests it holds unconfirmed.
    pub unconfirmed: usize,
    /// Under maintenance: nothing new is dispatched to it.
    pub maintenance: bool,
    /// The stream it publishes on (its last STREAM WRITE).
    pub writer: Option<String>,
    /// When it last sent a command.
    pub last_seen: std::time::Instant,
}
