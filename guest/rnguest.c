/* rnguest: the lab guest's traffic endpoints (busybox's nc cannot do UDP).
 *
 *   rnguest udp-echo PORT [REPLY_PORT]   every datagram received on PORT goes back unchanged to its
 *                                        sender's address, at REPLY_PORT if given (else its source port);
 *                                        payloads carry roamnet's sequence numbers and send times
 *                                        (experiments/traffic.py), which go back unchanged: the peer's
 *                                        receiver records the original send time
 *   rnguest tcp-echo PORT [LOG]          every connection to PORT gets back what it sends; one process each.
 *                                        It detects a broken connection: a reset, or a peer that stopped
 *                                        answering (keepalive probes and TCP_USER_TIMEOUT: unacknowledged
 *                                        data or probes for TCP_DEAD_S seconds). Each connection appends
 *                                        one line to LOG (else stderr) when it ends:
 *                                          tcp PEER_IP:PEER_PORT closed BYTES        the peer closed (EOF)
 *                                          tcp PEER_IP:PEER_PORT broken BYTES REASON  an error ended it
 *                                        BYTES is how many it echoed.
 *
 * Built static with Debian's gcc by guest/build.sh; runs as a child of the guest's /init. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define TCP_DEAD_S 10  /* a live migration's blackout is far shorter; a vanished peer is found within this */

static int bound(int type, int port) {
    int s = socket(AF_INET, type, 0), one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (s < 0) { perror("socket"); exit(1); }
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) { perror("bind"); exit(1); }
    return s;
}

static _Noreturn void udp_echo(int port, int reply_port) {
    int s = bound(SOCK_DGRAM, port);
    char buf[65536];
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0) continue;
        if (reply_port) from.sin_port = htons(reply_port);
        sendto(s, buf, n, 0, (struct sockaddr *)&from, len);
    }
}

/* keepalive probes on an idle connection, and a deadline on unacknowledged data */
static void watch_peer(int c) {
    int one = 1, idle = 2, intvl = 1, cnt = TCP_DEAD_S - 2;
    unsigned int user_timeout_ms = TCP_DEAD_S * 1000;
    setsockopt(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
    setsockopt(c, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
    setsockopt(c, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
    setsockopt(c, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
    setsockopt(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms);
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

/* echo until EOF or an error; one line to log_fd says which, and how many bytes went back */
static void echo_conn(int c, const struct sockaddr_in *peer, int log_fd) {
    char buf[4096], line[160], who[INET_ADDRSTRLEN];
    unsigned long long echoed = 0;
    const char *reason = NULL;
    ssize_t n;
    watch_peer(c);
    for (;;) {
        n = read(c, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) {
            if (errno == EINTR) continue;
            reason = strerror(errno);
            break;
        }
        for (ssize_t off = 0; off < n;) {
            ssize_t w = write(c, buf + off, n - off);
            if (w < 0) {
                if (errno == EINTR) continue;
                reason = strerror(errno);
                break;
            }
            off += w;
            echoed += w;
        }
        if (reason) break;
    }
    inet_ntop(AF_INET, &peer->sin_addr, who, sizeof who);
    if (reason)
        n = snprintf(line, sizeof line, "tcp %s:%u broken %llu %s\n", who, ntohs(peer->sin_port), echoed, reason);
    else
        n = snprintf(line, sizeof line, "tcp %s:%u closed %llu\n", who, ntohs(peer->sin_port), echoed);
    if (write(log_fd, line, n) < 0) perror("rnguest: log");
}

static int tcp_echo(int port, const char *log_path) {
    int s = bound(SOCK_STREAM, port);
    int log_fd = log_path ? open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0644) : 2;
    if (log_fd < 0) { perror(log_path); return 1; }
    signal(SIGCHLD, SIG_IGN);  /* no zombies */
    signal(SIGPIPE, SIG_IGN);  /* a write to a reset connection is an error to report, not a death */
    if (listen(s, 16) < 0) { perror("listen"); return 1; }
    for (;;) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        int c = accept(s, (struct sockaddr *)&peer, &len);
        if (c < 0) continue;
        if (fork() == 0) {
            close(s);
            echo_conn(c, &peer, log_fd);
            _exit(0);
        }
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "udp-echo")) udp_echo(atoi(argv[2]), argc > 3 ? atoi(argv[3]) : 0);
    if ((argc == 3 || argc == 4) && !strcmp(argv[1], "tcp-echo")) return tcp_echo(atoi(argv[2]), argc > 3 ? argv[3] : NULL);
    fprintf(stderr, "usage: rnguest udp-echo PORT [REPLY_PORT] | tcp-echo PORT [LOG]\n");
    return 2;
}
