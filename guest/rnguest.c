/* rnguest: the lab guest's traffic endpoints (busybox's nc cannot do UDP).
 *
 *   rnguest udp-echo PORT [REPLY_PORT]   every datagram received on PORT goes back unchanged to its
 *                                        sender's address, at REPLY_PORT if given (else its source port);
 *                                        payloads carry roamnet's sequence numbers (experiments/traffic.py)
 *   rnguest tcp-echo PORT                every connection to PORT gets back what it sends; one process each
 *
 * Built static with Debian's gcc by guest/build.sh; runs as a child of the guest's /init. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

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

static int tcp_echo(int port) {
    int s = bound(SOCK_STREAM, port);
    signal(SIGCHLD, SIG_IGN);  /* no zombies */
    if (listen(s, 16) < 0) { perror("listen"); return 1; }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        if (fork() == 0) {
            char buf[4096];
            ssize_t n;
            close(s);
            while ((n = read(c, buf, sizeof buf)) > 0)
                if (write(c, buf, n) != n) break;
            _exit(0);
        }
        close(c);
    }
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "udp-echo")) udp_echo(atoi(argv[2]), argc > 3 ? atoi(argv[3]) : 0);
    if (argc == 3 && !strcmp(argv[1], "tcp-echo")) return tcp_echo(atoi(argv[2]));
    fprintf(stderr, "usage: rnguest udp-echo PORT [REPLY_PORT] | tcp-echo PORT\n");
    return 2;
}
