/*  A libmlm echo worker for the interoperability tests (our own program):
    worker ENDPOINT SERVICE
    Offers SERVICE and mails each request's content back to its sender;
    exits after 5 s without a request.  */
#include <malamute.h>

int main (int argc, char *argv [])
{
    if (argc < 3) {
        fprintf (stderr, "usage: worker ENDPOINT SERVICE\n");
        return 2;
    }
    mlm_client_t *client = mlm_client_new ();
    if (mlm_client_connect (client, argv [1], 3000, "c-worker")
    ||  mlm_client_set_worker (client, argv [2], ".*")) {
        fprintf (stderr, "worker: cannot connect or offer\n");
        return 2;
    }
    printf ("= ready\n");
    fflush (stdout);
    zpoller_t *poller = zpoller_new (mlm_client_msgpipe (client), NULL);
    while (zpoller_wait (poller, 5000)) {
        zmsg_t *msg = mlm_client_recv (client);
        if (!msg)
            break;
        if (streq (mlm_client_command (client), "SERVICE DELIVER"))
            mlm_client_sendto (client, mlm_client_sender (client), mlm_client_subject (client),
                               mlm_client_tracker (client), 0, &msg);
        zmsg_destroy (&msg);
    }
    zpoller_destroy (&poller);
    mlm_client_destroy (&client);
    return 0;
}
