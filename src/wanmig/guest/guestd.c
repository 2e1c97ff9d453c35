/*
 * guestd - the wanmig guest's measured workloads, one small static binary.
 *
 *   guestd udp-echo PORT            echo every UDP datagram back to its sender
 *   guestd tcp-echo PORT            echo everything on many long-lived TCP connections
 *   guestd writer PATH PERIOD_MS    append a checksummed, sequence-numbered record
 *                                   every PERIOD_MS to PATH (O_APPEND|O_DSYNC)
 *   guestd dirty SIZE_MIB RATE_MBPS keep SIZE_MIB of anonymous memory resident,
 *                                   rewrite whole pages of it at RATE_MBPS
 *                                   megabytes (10^6 bytes) per second (0: only
 *                                   hold) and verify every page it holds
 *   guestd app PORT REDIS_PORT      the `app` workload's application server, behind
 *                                   nginx: each HTTP request is an order stored in
 *                                   Redis (127.0.0.1:REDIS_PORT), answered with its
 *                                   number
 *   guestd agent DEVICE IFNAME      the host's agent on a virtio-serial port: one
 *                                   request per line, one answer per line ("ok" or
 *                                   "error WHAT"); "ping", and "addr A.B.C.D/N", which
 *                                   adds that address to IFNAME (the dns-tunnel mode
 *                                   gives the VM an address of B's subnet at B and
 *                                   keeps the old one for open connections)
 *
 * Each workload is its own process (one sub-command each) so that a crash in one
 * cannot stall the others, and each loop stays single-threaded and easy to read.
 *
 * Readiness: a sub-command first does everything that can fail (bind, open, first
 * record), then forks; the parent prints the child's PID on stdout and exits 0.
 * So /init learns both "it is serving" and "which PID to watch" from
 * `pid=$(guestd ...)`, and a failure is a non-zero exit with a message on stderr.
 *
 * Built on the host with `gcc -static -O2` when the image is built; it needs
 * nothing but libc.
 *
 * Integrity record (64 bytes, text, so a human can `cat` the log):
 *   "wanmig SSSSSSSSSS MMMMMMMMMMMM CCCCCCCC" + spaces + "\n"
 *   S = sequence number (10 digits), M = guest CLOCK_MONOTONIC in ms (12 digits),
 *   C = crc32 (zlib polynomial) of the 31 bytes before it, lowercase hex.
 * The host-side parser is wanmig/integrity.py; keep the two in step.
 *
 * Memory dirtier (the `dirty` workload of the memory-migration experiments):
 * a precopy migration must resend every page the guest writes while it copies,
 * so this process writes pages at a known rate. The working set is one
 * anonymous mapping, every page written once at start so that every page is
 * resident and non-zero (a zero page costs a migration almost nothing). Then,
 * every 10 ms slice (CLOCK_MONOTONIC, absolute deadlines), it rewrites
 * RATE * 10^6 / 100 bytes' worth of whole 4 KiB pages, each chosen
 * pseudo-randomly in the working set. A fraction of a page is carried over to
 * the next slice, so low rates are exact on average. A slice that wakes late
 * is followed at once by the next one, but more than one missed slice is
 * dropped, not caught up: a starved vCPU writes less rather than in bursts.
 * The size (with the bookkeeping below) must fit in free memory (checked
 * before "ready"), so an oversized working set is a clear error instead of
 * the OOM killer.
 *
 * Page format (64-bit words, little-endian as the guest stores them):
 *   word 0  the page's index in the working set
 *   word 1  its sequence number: how many times this page has been written (1 first)
 *   word 2  checksum of the other 511 words (page_checksum: four lanes of
 *           h = (h ^ w) * 0x9E3779B97F4A7C15, folded with splitmix64's finaliser)
 *   3..511  fresh xorshift64 output: incompressible on purpose, so that
 *           compression (or zero/duplicate page detection) cannot trivialise
 *           the workload
 * The process also keeps, in its own memory, expected_seq[page]: the seq it
 * last wrote there. A migration that loses a page usually leaves an older,
 * self-consistent version of it (index and checksum fine), so the seq is
 * compared against expected_seq, not only the checksum checked.
 *
 * Memory check: a page is verified (index, seq == expected, checksum) before
 * every rewrite, and a background sweep verifies the whole working set in
 * order, a share of it in every slice: pages / 100 per slice, so one sweep
 * takes about 1 s, but at most SWEEP_MAX_PAGES_PER_S (64 MiB/s), so a large
 * set sweeps more slowly rather than eating the vCPU. A page found bad is
 * rewritten at once (its next seq), so each bad version counts once; rate 0
 * sweeps too, and writes nothing but such repairs. After each full sweep one
 * line goes to stderr (inherited from /init: the serial console):
 *   wanmig-memcheck sweep=N pages=P errors=E
 * N counts sweeps from 1, P is the pages verified, E the bad pages found since
 * the previous sweep line (by the sweep or before a rewrite). The first
 * MAX_REPORTED bad pages of the process's life also get a line each, before
 * their sweep's line:
 *   wanmig-memcheck bad page=IDX seq=S expected=X index=I checksum=ok|bad
 * (S and I as found in the page, X from expected_seq). The host-side parser
 * is memcheck_from_console in wanmig/integrity.py; keep the two in step.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define RECORD_SIZE 64
#define CRC_OFFSET 31 /* "wanmig " + 10 + " " + 12 + " " */
#define MAX_TCP_CLIENTS 1024
#define TCP_BUF 65536

static _Noreturn void die(const char *what)
{
    fprintf(stderr, "guestd: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Fork after setup succeeded: the parent reports the worker's PID and exits. */
static void detach_when_ready(void)
{
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    if (pid > 0) {
        printf("%d\n", (int)pid);
        exit(0);
    }
    /* The caller reads our stdout to EOF (`$(...)`): let go of it, or it waits forever. */
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0) {
        dup2(fd, STDOUT_FILENO);
        close(fd);
    }
    setsid();
}

static int parse_port(const char *s)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 1 || v > 65535) {
        fprintf(stderr, "guestd: bad port '%s'\n", s);
        exit(2);
    }
    return (int)v;
}

static int bound_socket(int type, int port)
{
    int fd = socket(AF_INET6, type, 0);
    int family = AF_INET6;
    if (fd < 0) { /* IPv6 disabled: fall back to IPv4 only */
        family = AF_INET;
        fd = socket(AF_INET, type, 0);
        if (fd < 0)
            die("socket");
    }
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (family == AF_INET6) {
        /* one socket for IPv4 and IPv6 clients */
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons(port),
                                 .sin6_addr = in6addr_any};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("bind");
    } else {
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                                .sin_addr.s_addr = htonl(INADDR_ANY)};
        if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0)
            die("bind");
    }
    return fd;
}

/* ---- UDP echo: the 1 ms probe's partner; answer at once, keep no state. ---- */

static _Noreturn void udp_echo(int port)
{
    int fd = bound_socket(SOCK_DGRAM, port);
    detach_when_ready();
    static char buf[65536];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("recvfrom");
        }
        /* A failed send (e.g. no route during a migration) drops this reply only. */
        sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&peer, plen);
    }
}

/* ---- TCP echo: many long-lived connections, one poll() loop. ----
 * Per client we hold at most one buffer of unsent bytes; while it is not empty we
 * stop reading from that client, so a slow reader gets TCP back-pressure instead of
 * us buffering without bound. */

struct client {
    char *buf;
    size_t len, off; /* pending bytes are buf[off..len) */
};

static _Noreturn void tcp_echo(int port)
{
    int lfd = bound_socket(SOCK_STREAM, port);
    if (listen(lfd, 128) < 0)
        die("listen");
    fcntl(lfd, F_SETFL, O_NONBLOCK);
    detach_when_ready();

    static struct pollfd pfd[MAX_TCP_CLIENTS + 1];
    static struct client cl[MAX_TCP_CLIENTS + 1];
    int n = 1;
    pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};

    for (;;) {
        if (poll(pfd, (nfds_t)n, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (pfd[0].revents & POLLIN) {
            for (;;) {
                int c = accept(lfd, NULL, NULL);
                if (c < 0)
                    break; /* EAGAIN: accepted all; other errors: try next round */
                if (n > MAX_TCP_CLIENTS) {
                    close(c);
                    continue;
                }
                int one = 1;
                /* echo each chunk immediately: the probe measures latency */
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                fcntl(c, F_SETFL, O_NONBLOCK);
                char *b = malloc(TCP_BUF);
                if (!b) {
                    close(c);
                    continue;
                }
                pfd[n] = (struct pollfd){.fd = c, .events = POLLIN};
                cl[n] = (struct client){.buf = b};
                n++;
            }
        }
        for (int i = 1; i < n; i++) {
            struct client *k = &cl[i];
            int closed = 0;
            if (pfd[i].revents & (POLLERR | POLLNVAL)) {
                closed = 1;
            } else if (k->len == 0 && (pfd[i].revents & (POLLIN | POLLHUP))) {
                ssize_t r = read(pfd[i].fd, k->buf, TCP_BUF);
                if (r > 0) {
                    k->len = (size_t)r;
                    k->off = 0;
                } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
                    closed = 1;
                }
            }
            if (!closed && k->len > k->off) {
                ssize_t w = write(pfd[i].fd, k->buf + k->off, k->len - k->off);
                if (w > 0)
                    k->off += (size_t)w;
                else if (w < 0 && errno != EAGAIN && errno != EINTR)
                    closed = 1;
                if (k->off == k->len)
                    k->off = k->len = 0;
            }
            if (closed) {
                close(pfd[i].fd);
                free(k->buf);
                /* move the last slot here and look at slot i again */
                n--;
                pfd[i] = pfd[n];
                cl[i] = cl[n];
                i--;
                continue;
            }
            pfd[i].events = k->len ? POLLOUT : POLLIN;
            pfd[i].revents = 0;
        }
    }
}

/* ---- Integrity writer ---- */

static uint32_t crc_table[256];

static void crc32_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

/* Same value as zlib.crc32() / Python's zlib.crc32(). */
static uint32_t crc32(const char *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    while (n--)
        c = crc_table[(c ^ (unsigned char)*p++) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static void format_record(char rec[RECORD_SIZE], unsigned long long seq, unsigned long long ms)
{
    char head[CRC_OFFSET + 1];
    snprintf(head, sizeof head, "wanmig %010llu %012llu ", seq % 10000000000ULL,
             ms % 1000000000000ULL);
    memset(rec, ' ', RECORD_SIZE);
    memcpy(rec, head, CRC_OFFSET);
    char crc[9];
    snprintf(crc, sizeof crc, "%08x", crc32(head, CRC_OFFSET));
    memcpy(rec + CRC_OFFSET, crc, 8);
    rec[RECORD_SIZE - 1] = '\n';
}

static int all_zero(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Returns the record's seq, or -1 if it is not a valid record. */
static long long parse_record(const char rec[RECORD_SIZE])
{
    char head[CRC_OFFSET + 1], crc[9];
    unsigned long long seq, ms;
    if (memcmp(rec, "wanmig ", 7) != 0 || rec[RECORD_SIZE - 1] != '\n')
        return -1;
    memcpy(head, rec, CRC_OFFSET);
    head[CRC_OFFSET] = '\0';
    if (sscanf(head, "wanmig %10llu %12llu ", &seq, &ms) != 2)
        return -1;
    snprintf(crc, sizeof crc, "%08x", crc32(rec, CRC_OFFSET));
    if (memcmp(crc, rec + CRC_OFFSET, 8) != 0)
        return -1;
    return (long long)seq;
}

/*
 * Continue an existing log: drop a torn tail (a record cut short by a crash or a
 * power cut would otherwise shift every later record) and the records of zeros after
 * the last one that verifies (the file's size reached the disk before its data: the
 * write never returned), then continue after that record. Returns the next sequence
 * number.
 */
static unsigned long long recover(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    off_t size = st.st_size - st.st_size % RECORD_SIZE;
    if (size != st.st_size) {
        fprintf(stderr, "guestd: %s: dropping torn tail of %lld bytes\n", path,
                (long long)(st.st_size - size));
        if (ftruncate(fd, size) < 0 || fsync(fd) < 0)
            die("truncate torn tail");
    }
    unsigned long long next = 0;
    off_t end = size; /* the log ends after the last record that is not all zeros */
    for (off_t at = size - RECORD_SIZE; at >= 0; at -= RECORD_SIZE) {
        char rec[RECORD_SIZE];
        if (pread(fd, rec, RECORD_SIZE, at) != RECORD_SIZE)
            die("pread");
        if (end == at + RECORD_SIZE && all_zero(rec, RECORD_SIZE))
            end = at;
        long long seq = parse_record(rec);
        if (seq >= 0) {
            next = (unsigned long long)seq + 1;
            break;
        }
    }
    if (end != size) {
        fprintf(stderr, "guestd: %s: dropping %lld bytes of zeros at its end\n", path,
                (long long)(size - end));
        if (ftruncate(fd, end) < 0 || fsync(fd) < 0)
            die("truncate zeros");
    }
    close(fd);
    return next;
}

static unsigned long long now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (unsigned long long)t.tv_sec * 1000ULL + (unsigned long long)t.tv_nsec / 1000000ULL;
}

static int append_record(int fd, unsigned long long seq)
{
    char rec[RECORD_SIZE];
    format_record(rec, seq, now_ms());
    /* One write() of the whole record: with O_APPEND it lands at the end in one
     * piece, and with O_DSYNC it is on the disk when write() returns. */
    ssize_t w = write(fd, rec, RECORD_SIZE);
    return w == RECORD_SIZE ? 0 : -1;
}

static int writer(const char *path, const char *period_s)
{
    long period_ms = strtol(period_s, NULL, 10);
    if (period_ms < 1 || period_ms > 60000) {
        fprintf(stderr, "guestd: bad period '%s'\n", period_s);
        return 2;
    }
    crc32_init();
    unsigned long long seq = recover(path);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_DSYNC, 0644);
    if (fd < 0)
        die(path);
    if (append_record(fd, seq) < 0) /* proves the disk takes writes before "ready" */
        die("write first record");
    seq++;
    detach_when_ready();

    const long long period_ns = period_ms * 1000000LL;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    int failing = 0;
    for (;;) {
        /* Absolute deadlines: the write's own latency does not add up as drift. */
        next.tv_nsec += period_ns;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        int rc;
        while ((rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL)) == EINTR)
            ;
        /* Fell behind (slow disk): skip the missed ticks rather than write a burst;
         * the record's timestamp shows the gap, the seq stays contiguous. */
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long late = (now.tv_sec - next.tv_sec) * 1000000000LL + (now.tv_nsec - next.tv_nsec);
        if (late > period_ns) {
            long long skip = late / period_ns;
            long long ns = next.tv_nsec + skip * period_ns;
            next.tv_sec += ns / 1000000000LL;
            next.tv_nsec = ns % 1000000000LL;
        }
        if (append_record(fd, seq) == 0) {
            seq++;
            if (failing)
                fprintf(stderr, "guestd: writer: writes succeed again at seq %llu\n", seq - 1);
            failing = 0;
        } else if (!failing) { /* report once, keep trying: the same seq is retried */
            fprintf(stderr, "guestd: writer: write failed at seq %llu: %s\n", seq, strerror(errno));
            failing = 1;
        }
    }
}

/* ---- Memory dirtier ---- */

#define PAGE 4096
#define SLICE_NS 10000000L /* 10 ms */
#define MAX_DIRTY_MIB 65536
#define MAX_DIRTY_MBPS 10000.0
#define FREE_HEADROOM (16UL << 20) /* leave the rest of the guest room to breathe */
#define PAGE_WORDS (PAGE / sizeof(uint64_t))
#define W_INDEX 0 /* the page format (header comment) */
#define W_SEQ 1
#define W_SUM 2
#define W_DATA 3
#define SLICES_PER_S (1000000000L / SLICE_NS)
#define SWEEP_MAX_PAGES_PER_S 16384L /* 64 MiB/s: a 64 MiB set in about 1 s */
#define MAX_REPORTED 8               /* bad pages described one by one, per process */

static uint64_t rng_state;

/* xorshift64 (Marsaglia): fast under TCG, and its output does not compress. */
static inline uint64_t xorshift64(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* splitmix64's finaliser: every input bit reaches every output bit. */
static inline uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    x ^= x >> 31;
    return x;
}

static inline void mix_words(uint64_t h[4], const uint64_t w[4])
{
    /* (h ^ w) * odd is a bijection of h for each w, so a change to the words of
     * one lane always changes that lane; four lanes let the multiplies overlap. */
    for (int k = 0; k < 4; k++)
        h[k] = (h[k] ^ w[k]) * 0x9E3779B97F4A7C15ULL;
}

/* Checksum of a page's words but W_SUM (which counts as 0). */
static uint64_t page_checksum(const uint64_t *page)
{
    uint64_t h[4] = {0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL,
                     0xA4093822299F31D0ULL, 0x082EFA98EC4E6C89ULL};
    const uint64_t head[4] = {page[W_INDEX], page[W_SEQ], 0, page[W_DATA]};
    mix_words(h, head);
    for (size_t i = 4; i < PAGE_WORDS; i += 4)
        mix_words(h, page + i);
    return mix64(h[0] ^ mix64(h[1] ^ mix64(h[2] ^ mix64(h[3]))));
}

struct working_set {
    uint64_t *mem;                    /* pages * PAGE bytes */
    uint64_t *expected_seq;           /* the seq last written to each page */
    size_t pages;
    size_t sweep_at;                  /* next page the sweep verifies */
    unsigned long long sweep;         /* sweeps completed */
    unsigned long long sweep_errors;  /* bad pages found since the last sweep line */
    unsigned reported;                /* bad pages described so far (MAX_REPORTED) */
};

static inline uint64_t *page_of(const struct working_set *ws, size_t p)
{
    return ws->mem + p * PAGE_WORDS;
}

/* Write page p's next version. */
static void write_page(struct working_set *ws, size_t p)
{
    uint64_t *page = page_of(ws, p);
    page[W_INDEX] = p;
    page[W_SEQ] = ++ws->expected_seq[p];
    for (size_t i = W_DATA; i < PAGE_WORDS; i++)
        page[i] = xorshift64();
    page[W_SUM] = page_checksum(page);
}

/* Is page p the version last written there? A bad one is counted and (the first
 * few) described on stderr. */
static int page_ok(struct working_set *ws, size_t p)
{
    const uint64_t *page = page_of(ws, p);
    const int sum_ok = page[W_SUM] == page_checksum(page);
    if (sum_ok && page[W_INDEX] == p && page[W_SEQ] == ws->expected_seq[p])
        return 1;
    ws->sweep_errors++;
    if (ws->reported < MAX_REPORTED) {
        ws->reported++;
        fprintf(stderr, "wanmig-memcheck bad page=%zu seq=%llu expected=%llu index=%llu"
                        " checksum=%s\n", p, (unsigned long long)page[W_SEQ],
                (unsigned long long)ws->expected_seq[p], (unsigned long long)page[W_INDEX],
                sum_ok ? "ok" : "bad");
    }
    return 0;
}

/* Verify the next n pages of the sweep; a line on stderr when it wraps. */
static void sweep_step(struct working_set *ws, size_t n)
{
    while (n--) {
        if (!page_ok(ws, ws->sweep_at))
            write_page(ws, ws->sweep_at); /* repaired: the next sweep does not recount it */
        if (++ws->sweep_at == ws->pages) {
            ws->sweep_at = 0;
            ws->sweep++;
            fprintf(stderr, "wanmig-memcheck sweep=%llu pages=%zu errors=%llu\n", ws->sweep,
                    ws->pages, ws->sweep_errors);
            ws->sweep_errors = 0;
        }
    }
}

static long parse_size_mib(const char *s)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno || v < 1 || v > MAX_DIRTY_MIB) {
        fprintf(stderr, "guestd: bad size '%s' (MiB, 1..%d)\n", s, MAX_DIRTY_MIB);
        exit(2);
    }
    return v;
}

static double parse_rate_mbps(const char *s)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    /* !(v >= 0) also rejects NaN */
    if (*s == '\0' || *end != '\0' || errno || !(v >= 0.0) || v > MAX_DIRTY_MBPS) {
        fprintf(stderr, "guestd: bad rate '%s' (MB/s, 0..%g)\n", s, MAX_DIRTY_MBPS);
        exit(2);
    }
    return v;
}

/* Sleep until the next 10 ms slice after *next (absolute deadlines). Behind by more
 * than a slice (a starved vCPU, a rate beyond what it can write, slow or throttled
 * disk writes): the slice already due runs at once, the others are dropped -- less
 * is written, never in bursts. */
static void next_slice(struct timespec *next)
{
    next->tv_nsec += SLICE_NS;
    if (next->tv_nsec >= 1000000000L) {
        next->tv_nsec -= 1000000000L;
        next->tv_sec++;
    }
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, next, NULL) == EINTR)
        ;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    long long late = (now.tv_sec - next->tv_sec) * 1000000000LL + (now.tv_nsec - next->tv_nsec);
    if (late > SLICE_NS)
        *next = now;
}

static _Noreturn void dirty(long size_mib, double rate_mbps)
{
    const size_t size = (size_t)size_mib << 20;
    struct working_set ws = {.pages = size / PAGE};
    const size_t seq_size = ws.pages * sizeof *ws.expected_seq;

    struct sysinfo si;
    if (sysinfo(&si) < 0)
        die("sysinfo");
    unsigned long long free_bytes = (unsigned long long)si.freeram * si.mem_unit;
    if ((unsigned long long)size + seq_size + FREE_HEADROOM > free_bytes) {
        fprintf(stderr, "guestd: dirty: %ld MiB does not fit in %llu MiB of free memory\n",
                size_mib, free_bytes >> 20);
        exit(1);
    }
    ws.mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (ws.mem == MAP_FAILED)
        die("mmap working set");
    ws.expected_seq = mmap(NULL, seq_size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* all 0: never written */
    if (ws.expected_seq == MAP_FAILED)
        die("mmap expected_seq");

    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    rng_state = ((uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec)
                ^ ((uint64_t)getpid() << 32);
    if (rng_state == 0) /* the one state xorshift never leaves */
        rng_state = 0x9E3779B97F4A7C15ULL;
    /* Every page resident and non-zero before "ready" (seq 1). (The fork below
     * shares them copy-on-write only until the parent exits, a moment later.) */
    for (size_t p = 0; p < ws.pages; p++)
        write_page(&ws, p);
    detach_when_ready();

    const double bytes_per_slice = rate_mbps * 1e6 * (SLICE_NS / 1e9); /* 0: only hold */
    /* ceil(pages / 100): one sweep per second, unless that is over the cap */
    size_t sweep_per_slice = (ws.pages + SLICES_PER_S - 1) / SLICES_PER_S;
    const size_t sweep_max = (SWEEP_MAX_PAGES_PER_S + SLICES_PER_S - 1) / SLICES_PER_S;
    if (sweep_per_slice > sweep_max)
        sweep_per_slice = sweep_max;
    double credit = 0.0; /* bytes owed; under one page carries to the next slice */
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    for (;;) {
        credit += bytes_per_slice;
        while (credit >= PAGE) {
            size_t p = xorshift64() % ws.pages;
            page_ok(&ws, p); /* counted if bad; rewritten either way */
            write_page(&ws, p);
            credit -= PAGE;
        }
        sweep_step(&ws, sweep_per_slice);
        next_slice(&next);
    }
}

/* ---------------------------------------------------------------- disk rewriter
 *
 * guestd diskwrite PATH SIZE_MIB RATE_MBPS: a file of SIZE_MIB on the data disk,
 * written whole once before "ready", then rewritten at RATE_MBPS (10^6 bytes/s)
 * in whole 64 KiB blocks chosen pseudo-randomly, every 10 ms slice as the
 * dirtier does. The file is opened O_DSYNC: a write returns once it is on the
 * virtual disk, so its latency is what the guest's storage costs (a mirror in
 * write-blocking mode adds the WAN's round trip; a throttle, its wait). Each
 * block is text the guest wrote, 64-byte lines "wanmig block B seq S " and
 * pseudo-random hex digits: no two blocks alike, and about as compressible as
 * logs or records (zstd about 2:1), not zeros, not random bytes, not one line
 * repeated (which compressed 300:1 and flattered any compressing transport). Once a second one line on stderr (the
 * serial console):
 *   wanmig-diskio n=N bytes=B lat=K:C,K:C,...
 * N writes of B bytes in all that second; C of them took a latency in bucket K:
 * [2^(K/4), 2^((K+1)/4)) microseconds (4 buckets per octave). The host-side
 * parser is wanmig/storage/diskio.py; keep the two in step.
 */
#define DISKIO_BLOCK 65536
#define DISKIO_BUCKETS 128

static int lat_bucket(unsigned long long us)
{
    if (us < 1)
        us = 1;
    int e = 63 - __builtin_clzll(us);
    int frac = e >= 2 ? (int)((us >> (e - 2)) & 3) : (int)((us << (2 - e)) & 3);
    int b = 4 * e + frac;
    return b < DISKIO_BUCKETS ? b : DISKIO_BUCKETS - 1;
}

static void fill_block(char *buf, size_t block, unsigned long long seq)
{
    static const char hex[] = "0123456789abcdef";
    char head[64];
    int n = snprintf(head, sizeof head, "wanmig block %zu seq %llu ", block, seq);
    unsigned long long x = (block + 1) * 0x9E3779B97F4A7C15ULL ^ (seq + 1) * 0xBF58476D1CE4E5B9ULL;
    for (size_t off = 0; off < DISKIO_BLOCK; off += 64) {
        char *line = buf + off;
        memcpy(line, head, n);
        for (int i = n; i < 63; i++) {
            if ((i - n) % 16 == 0) {   /* xorshift64: 16 hex digits per step */
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
            }
            line[i] = hex[(x >> (4 * ((i - n) % 16))) & 15];
        }
        line[63] = '\n';
    }
}

static _Noreturn void diskwrite(const char *path, long size_mib, double rate_mbps)
{
    const size_t blocks = ((size_t)size_mib << 20) / DISKIO_BLOCK;
    if (blocks == 0) {
        fprintf(stderr, "guestd: diskwrite: %ld MiB is under one block\n", size_mib);
        exit(1);
    }
    int fd = open(path, O_RDWR | O_CREAT | O_DSYNC, 0644);
    if (fd < 0)
        die("open diskwrite file");
    static char buf[DISKIO_BLOCK];
    unsigned long long *seq = calloc(blocks, sizeof *seq);
    if (!seq)
        die("calloc");
    for (size_t b = 0; b < blocks; b++) {
        fill_block(buf, b, ++seq[b]);
        if (pwrite(fd, buf, DISKIO_BLOCK, (off_t)(b * DISKIO_BLOCK)) != DISKIO_BLOCK)
            die("fill diskwrite file");
    }
    struct timespec now, next, t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &now);
    rng_state = ((uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec) ^ 0xD15C;
    detach_when_ready();

    const double bytes_per_slice = rate_mbps * 1e6 * (SLICE_NS / 1e9);
    unsigned long long counts[DISKIO_BUCKETS] = {0}, n = 0;
    double credit = 0.0;
    clock_gettime(CLOCK_MONOTONIC, &next);
    time_t report_at = next.tv_sec + 1;
    for (;;) {
        credit += bytes_per_slice;
        while (credit >= DISKIO_BLOCK) {
            size_t b = xorshift64() % blocks;
            fill_block(buf, b, ++seq[b]);
            clock_gettime(CLOCK_MONOTONIC, &t0);
            if (pwrite(fd, buf, DISKIO_BLOCK, (off_t)(b * DISKIO_BLOCK)) != DISKIO_BLOCK)
                die("rewrite");
            clock_gettime(CLOCK_MONOTONIC, &t1);
            long long us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
            counts[lat_bucket(us > 0 ? (unsigned long long)us : 0)]++;
            n++;
            credit -= DISKIO_BLOCK;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec >= report_at) {
            char line[4096];
            int len = snprintf(line, sizeof line, "wanmig-diskio n=%llu bytes=%llu lat=", n,
                               n * DISKIO_BLOCK);
            const char *sep = "";
            for (int k = 0; k < DISKIO_BUCKETS && len < (int)sizeof line - 32; k++) {
                if (counts[k]) {
                    len += snprintf(line + len, sizeof line - len, "%s%d:%llu", sep, k, counts[k]);
                    sep = ",";
                }
            }
            fprintf(stderr, "%s\n", line);
            memset(counts, 0, sizeof counts);
            n = 0;
            report_at = now.tv_sec + 1;
        }
        next_slice(&next);
    }
}

/* ---- app: the application tier of the `app` workload (nginx -> app -> Redis). ----
 * One request at a time (nginx queues the rest): read the request head, then one
 * Redis round trip, pipelined -- INCR orders, SET order:<n mod 4096> <record>, and
 * LPUSH recent <n> + LTRIM recent 0 99 -- and answer with the order's number.  The
 * record is text a shop might store (number, time, path, client), so what Redis
 * writes to its append-only file on the guest's disk is the application's data:
 * neither zeros nor random bytes.  A Redis that went away is reconnected to on the
 * next request; until then requests get 503. */

#define APP_REQ_MAX 8192

static int redis_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {.tv_sec = 2};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Read one RESP reply line ("+OK", ":42", "-ERR ..."); its integer for ':' replies. */
static int redis_reply(int fd, long long *value)
{
    char line[512];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, line + n, 1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0 || n + 1 >= sizeof line)
            return -1;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = '\0';
    if (line[0] == ':' && value)
        *value = strtoll(line + 1, NULL, 10);
    return line[0] == '-' ? -1 : 0;
}

/* A RESP command from its words. */
static size_t resp(char *out, size_t cap, int argc, const char **argv)
{
    size_t len = (size_t)snprintf(out, cap, "*%d\r\n", argc);
    for (int i = 0; i < argc && len < cap; i++)
        len += (size_t)snprintf(out + len, cap - len, "$%zu\r\n%s\r\n", strlen(argv[i]),
                                argv[i]);
    return len;
}

static long long app_order(int *redis, int redis_port, const char *path, const char *client)
{
    if (*redis < 0 && (*redis = redis_connect(redis_port)) < 0)
        return -1;
    static char cmd[4096];
    size_t len = resp(cmd, sizeof cmd, 2, (const char *[]){"INCR", "orders"});
    if (write_all(*redis, cmd, len) < 0)
        goto broken;
    long long n = -1;
    if (redis_reply(*redis, &n) < 0)
        goto broken;
    char key[32], num[24], record[512];
    snprintf(key, sizeof key, "order:%lld", n % 4096);
    snprintf(num, sizeof num, "%lld", n);
    snprintf(record, sizeof record, "order=%lld at_ms=%llu path=%.200s client=%.64s "
             "items=%lld total_cents=%lld status=placed", n, now_ms(), path, client,
             1 + n % 7, 199 + (n * 37) % 9000);
    len = resp(cmd, sizeof cmd, 3, (const char *[]){"SET", key, record});
    len += resp(cmd + len, sizeof cmd - len, 3, (const char *[]){"LPUSH", "recent", num});
    len += resp(cmd + len, sizeof cmd - len, 4, (const char *[]){"LTRIM", "recent", "0", "99"});
    if (write_all(*redis, cmd, len) < 0)
        goto broken;
    for (int i = 0; i < 3; i++)
        if (redis_reply(*redis, NULL) < 0)
            goto broken;
    return n;
broken:
    close(*redis);
    *redis = -1;
    return -1;
}

static _Noreturn void app(int port, int redis_port)
{
    int lfd = bound_socket(SOCK_STREAM, port);
    if (listen(lfd, 128) < 0)
        die("listen");
    int redis = -1;
    for (int i = 0; i < 100 && (redis = redis_connect(redis_port)) < 0; i++)
        usleep(100000); /* Redis may still be loading its append-only file */
    if (redis < 0)
        die("connect to redis");
    detach_when_ready();
    static char req[APP_REQ_MAX + 1];
    for (;;) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof peer;
        int fd = accept(lfd, (struct sockaddr *)&peer, &plen);
        if (fd < 0)
            continue;
        struct timeval tv = {.tv_sec = 2};
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        size_t n = 0;
        while (n < APP_REQ_MAX) {
            ssize_t r = read(fd, req + n, APP_REQ_MAX - n);
            if (r <= 0)
                break;
            n += (size_t)r;
            req[n] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[n] = '\0';
        char path[256] = "/", client[64] = "-";
        sscanf(req, "%*s %255s", path);
        const char *fwd = strstr(req, "X-Real-IP: ");
        if (fwd)
            sscanf(fwd + 11, "%63s", client);
        long long order = app_order(&redis, redis_port, path, client);
        char resp_buf[256];
        int len = order < 0
            ? snprintf(resp_buf, sizeof resp_buf, "HTTP/1.0 503 Service Unavailable\r\n"
                       "Content-Length: 9\r\n\r\nno redis\n")
            : snprintf(resp_buf, sizeof resp_buf, "HTTP/1.0 200 OK\r\nContent-Type: "
                       "text/plain\r\nContent-Length: %d\r\n\r\norder %lld\n",
                       7 + snprintf(NULL, 0, "%lld", order), order);
        write_all(fd, resp_buf, (size_t)len);
        close(fd);
    }
}

/* ---- Host agent ---- */

static int valid_cidr(const char *s)
{
    unsigned a, b, c, d, n;
    char tail;
    return sscanf(s, "%3u.%3u.%3u.%3u/%2u%c", &a, &b, &c, &d, &n, &tail) == 5 && a < 256 &&
           b < 256 && c < 256 && d < 256 && n >= 1 && n <= 32;
}

/* `ip addr add CIDR dev IFNAME` through busybox; 0 on success. */
static int add_address(const char *cidr, const char *ifname)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        execlp("ip", "ip", "addr", "add", cidr, "dev", ifname, (char *)NULL);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0)
        return -1;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

static void agent(const char *device, const char *ifname)
{
    int fd = open(device, O_RDWR);
    if (fd < 0)
        die(device);
    detach_when_ready();
    char line[256];
    size_t used = 0;
    int too_long = 0; /* inside a line longer than the buffer: answered once, then skipped */
    for (;;) {
        ssize_t n = read(fd, line + used, sizeof line - 1 - used);
        if (n <= 0) { /* the host is not connected (yet, or any more): wait for it */
            if (n < 0 && errno != EINTR && errno != EAGAIN)
                sleep(1);
            else
                usleep(100000);
            continue;
        }
        used += (size_t)n;
        char *nl;
        while ((nl = memchr(line, '\n', used)) != NULL) {
            *nl = '\0';
            const char *answer = too_long ? NULL : "error unknown request\n";
            too_long = 0;
            if (answer == NULL)
                ; /* the end of a line already answered as too long */
            else if (strcmp(line, "ping") == 0)
                answer = "ok pong\n";
            else if (strncmp(line, "addr ", 5) == 0 && valid_cidr(line + 5))
                answer = add_address(line + 5, ifname) == 0 ? "ok\n" : "error ip addr add failed\n";
            else if (strncmp(line, "addr ", 5) == 0)
                answer = "error not an address A.B.C.D/N\n";
            if (answer != NULL)
                write_all(fd, answer, strlen(answer));
            size_t rest = used - (size_t)(nl + 1 - line);
            memmove(line, nl + 1, rest);
            used = rest;
        }
        if (used == sizeof line - 1) { /* a line too long to be a request */
            if (!too_long) {
                const char *answer = "error request too long\n";
                write_all(fd, answer, strlen(answer));
            }
            too_long = 1;
            used = 0;
        }
    }
}

static int usage(void)
{
    fprintf(stderr, "usage: guestd udp-echo PORT | tcp-echo PORT | writer PATH PERIOD_MS"
                    " | dirty SIZE_MIB RATE_MBPS | diskwrite PATH SIZE_MIB RATE_MBPS"
                    " | app PORT REDIS_PORT | agent DEVICE IFNAME\n");
    return 2;
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN); /* a client that vanished must not kill the echo server */
    if (argc == 3 && strcmp(argv[1], "udp-echo") == 0)
        udp_echo(parse_port(argv[2]));
    if (argc == 3 && strcmp(argv[1], "tcp-echo") == 0)
        tcp_echo(parse_port(argv[2]));
    if (argc == 4 && strcmp(argv[1], "writer") == 0)
        return writer(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "dirty") == 0)
        dirty(parse_size_mib(argv[2]), parse_rate_mbps(argv[3]));
    if (argc == 4 && strcmp(argv[1], "app") == 0)
        app(parse_port(argv[2]), parse_port(argv[3]));
    if (argc == 4 && strcmp(argv[1], "agent") == 0)
        agent(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "diskwrite") == 0)
        diskwrite(argv[2], parse_size_mib(argv[3]), parse_rate_mbps(argv[4]));
    return usage();
}
