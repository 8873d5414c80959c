/*  A libmlm producer for the interoperability tests (our own program):
    producer ENDPOINT SERVICE SUBJECT BODY [COUNT]
    Sends COUNT requests (each with a tracker, so workers reply) and prints
    each reply as "SUBJECT BODY", one per line; exits 1 if a reply does not come within 10 s.  */
#include <malamute.h>

int main (int argc, char *argv [])
{
    if (argc < 5) {
        fprintf (stderr, "usage: producer ENDPOINT SERVICE SUBJECT BODY [COUNT]\n");
        return 2;
    }
    int count = argc > 5 ? atoi (argv [5]) : 1;
    mlm_client_t *client = mlm_client_new ();
    if (mlm_client_connect (client, argv [1], 3000, "c-producer")) {
        fprintf (stderr, "producer: cannot connect to %s\n", argv [1]);
        return 2;
    }
    for (int i = 0; i < count; i++) {
        zmsg_t *msg = zmsg_new ();
        zmsg_addstr (msg, argv [4]);
        /*  A tracker asks the worker for a reply.  */
        char tracker [32];
        snprintf (tracker, sizeof tracker, "c-%d", i);
        if (mlm_client_sendfor (client, argv [2], argv [3], tracker, 0, &msg)) {
            fprintf (stderr, "producer: sendfor failed\n");
            return 3;
        }
    }
    zpoller_t *poller = zpoller_new (mlm_client_msgpipe (client), NULL);
    int received = 0;
    while (received < count) {
        if (!zpoller_wait (poller, 10000)) {
            fprintf (stderr, "producer: no reply within 10 s (%d of %d)\n", received, count);
            return 1;
        }
        zmsg_t *reply = mlm_client_recv (client);
        if (!reply)
            return 1;
        char *body = zmsg_popstr (reply);
        printf ("= %s %s\n", mlm_client_subject (client), body ? body : "");
        fflush (stdout);
        zstr_free (&body);
        zmsg_destroy (&reply);
        received++;
    }
    zpoller_destroy (&poller);
    mlm_client_destroy (&client);
    return 0;
}
