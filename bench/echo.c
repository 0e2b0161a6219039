/*
 * A fast WebSocket echo server for the proxy_pass baseline (scenario B):
 * single thread, epoll, every text or binary message is sent back as it
 * came, unmasked; pings get pongs, a close gets a close.  All the replies
 * produced by one read are written with one write.
 *
 *   echo [-l 127.0.0.1] -p PORT
 *
 * Prints "echo listening on HOST:PORT" on stdout once it accepts, and a
 * line of counters on stderr when it gets SIGTERM or SIGINT.
 */

#include "ws_common.h"

static void
echo_message(srv_conn_t *c, int opcode, unsigned char *p, size_t len)
{
    srv_send(c, opcode, p, len);
}

int
main(int argc, char **argv)
{
    const char  *host = "127.0.0.1";
    int          port = 0, opt;

    while ((opt = getopt(argc, argv, "l:p:h")) != -1) {
        switch (opt) {
        case 'l':
            host = optarg;
            break;
        case 'p':
            port = atoi(optarg);
            break;
        default:
            fprintf(stderr, "usage: %s [-l host] -p port\n", argv[0]);
            return 2;
        }
    }

    if (port <= 0) {
        die("echo: -p PORT is required");
    }

    srv.on_message = echo_message;
    srv.require_mask = 1;
    srv_init(host, port);

    printf("echo listening on %s:%d\n", host, port);
    fflush(stdout);

    while (!srv_stop) {
        srv_poll(1000);
    }

    fprintf(stderr, "echo: connections=%llu frames_in=%llu frames_out=%llu\n",
            (unsigned long long) srv.nconn,
            (unsigned long long) srv.frames_in,
            (unsigned long long) srv.frames_out);
    return 0;
}
