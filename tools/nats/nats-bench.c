/*
 * nats-bench: the NATS side of tools/bench-nats.sh, with the C client
 * (libnats, Debian's libnats-dev).
 *
 *   nats-bench respond URL SUBJECT [asap|batch]
 *       An echo responder in queue group "bench": each request's data back
 *       to its reply subject. "asap" (the default) sends each reply at once
 *       (natsOptions_SetSendAsap), as alaska's workers do; "batch" leaves
 *       it to libnats' flusher thread (up to ~1 ms later, fewer syscalls).
 *   nats-bench request URL SUBJECT N WINDOW BYTES
 *       N requests of BYTES bytes with at most WINDOW outstanding, on one
 *       reply subscription, each sent at once; prints one JSON line with
 *       the same fields alaska-bench prints: sent, received, lost, rps,
 *       p50_us, p99_us, max_us.
 */
#include <nats/nats.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <inttypes.h>

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static natsConnection *connect_to(const char *url, bool asap) {
    natsOptions *opts = NULL;
    natsConnection *nc = NULL;
    if (natsOptions_Create(&opts) != NATS_OK || natsOptions_SetURL(opts, url) != NATS_OK ||
        natsOptions_SetSendAsap(opts, asap) != NATS_OK) {
        fprintf(stderr, "nats-bench: options: %s\n", nats_GetLastError(NULL));
        exit(1);
    }
    natsStatus s = natsConnection_Connect(&nc, opts);
    natsOptions_Destroy(opts);
    if (s != NATS_OK) {
        fprintf(stderr, "nats-bench: connect %s: %s\n", url, natsStatus_GetText(s));
        exit(4);
    }
    return nc;
}

static int respond(const char *url, const char *subject, bool asap) {
    natsConnection *nc = connect_to(url, asap);
    natsSubscription *sub = NULL;
    if (natsConnection_QueueSubscribeSync(&sub, nc, subject, "bench") != NATS_OK) {
        fprintf(stderr, "nats-bench: subscribe: %s\n", nats_GetLastError(NULL));
        return 1;
    }
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(nc);
    fprintf(stderr, "nats-bench: responding on %s (%s)\n", subject, asap ? "asap" : "batch");
    for (;;) {
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, sub, 1000);
        if (s == NATS_TIMEOUT)
            continue;
        if (s != NATS_OK)
            break;
        const char *reply = natsMsg_GetReply(m);
        if (reply != NULL)
            natsConnection_Publish(nc, reply, natsMsg_GetData(m), natsMsg_GetDataLength(m));
        natsMsg_Destroy(m);
    }
    natsConnection_Destroy(nc);
    return 0;
}

static int request(const char *url, const char *subject, long n, long window, long bytes) {
    if (n <= 0 || window <= 0 || bytes < 32) {
        fprintf(stderr, "nats-bench: N and WINDOW > 0, BYTES >= 32\n");
        return 2;
    }
    natsConnection *nc = connect_to(url, true);
    natsSubscription *sub = NULL;
    char inbox[64];
    snprintf(inbox, sizeof inbox, "_INBOX.bench.%ld", (long)nats_NowInNanoSeconds());
    if (natsConnection_SubscribeSync(&sub, nc, inbox) != NATS_OK) {
        fprintf(stderr, "nats-bench: subscribe: %s\n", nats_GetLastError(NULL));
        return 1;
    }
    natsSubscription_SetPendingLimits(sub, -1, -1);
    natsConnection_Flush(nc);
    uint64_t *lat = calloc((size_t)n, sizeof *lat);
    char *payload = malloc((size_t)bytes);
    memset(payload, 'x', (size_t)bytes);
    long sent = 0, received = 0;
    int64_t start = nats_NowInNanoSeconds();
    while (received < n) {
        while (sent < n && sent - received < window) {
            char head[40];
            snprintf(head, sizeof head, "%016lx%016" PRIx64, sent, (uint64_t)nats_NowInNanoSeconds());
            memcpy(payload, head, 32);
            natsConnection_PublishRequest(nc, subject, inbox, payload, (int)bytes);
            sent++;
        }
        natsMsg *m = NULL;
        natsStatus s = natsSubscription_NextMsg(&m, sub, 10000);
        if (s != NATS_OK)
            break; /* nothing for 10 s: the rest is lost */
        const char *d = natsMsg_GetData(m);
        if (natsMsg_GetDataLength(m) >= 32) {
            char t[17];
            memcpy(t, d + 16, 16);
            t[16] = 0;
            uint64_t at = strtoull(t, NULL, 16);
            lat[received] = ((uint64_t)nats_NowInNanoSeconds() - at) / 1000;
        }
        received++;
        natsMsg_Destroy(m);
    }
    double secs = (double)(nats_NowInNanoSeconds() - start) / 1e9;
    qsort(lat, (size_t)received, sizeof *lat, cmp_u64);
    uint64_t p50 = received ? lat[(size_t)((received - 1) * 0.50 + 0.5)] : 0;
    uint64_t p99 = received ? lat[(size_t)((received - 1) * 0.99 + 0.5)] : 0;
    uint64_t max = received ? lat[received - 1] : 0;
    printf("{\"sent\":%ld,\"received\":%ld,\"lost\":%ld,\"rps\":%.0f,\"p50_us\":%" PRIu64
           ",\"p99_us\":%" PRIu64 ",\"max_us\":%" PRIu64 "}\n",
           sent, received, sent - received, received / (secs > 0 ? secs : 1e-9), p50, p99, max);
    natsConnection_Destroy(nc);
    return received == n ? 0 : 3;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "respond") == 0)
        return respond(argv[2], argv[3], !(argc >= 5 && strcmp(argv[4], "batch") == 0));
    if (argc == 7 && strcmp(argv[1], "request") == 0)
        return request(argv[2], argv[3], atol(argv[4]), atol(argv[5]), atol(argv[6]));
    fprintf(stderr, "usage: nats-bench respond URL SUBJECT [asap|batch]\n"
                    "       nats-bench request URL SUBJECT N WINDOW BYTES\n");
    return 2;
}
