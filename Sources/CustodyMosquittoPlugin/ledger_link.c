/*
 * The plugin's side of the ledger socket: frames in and out, one request at a time, over a
 * blocking Unix domain socket with a timeout. Mosquitto 2.0's callbacks must answer before
 * they return, so each request waits for its answer (one durable ledger commit for a claim).
 */
#include "custody_mosquitto.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

void custody_buffer_start(struct custody_buffer *buffer, uint8_t type, uint32_t request_id)
{
    buffer->length = 4; /* the length prefix, set when sent */
    buffer->position = 0;
    buffer->overflow = false;
    custody_put_u8(buffer, CUSTODY_WIRE_VERSION);
    custody_put_u8(buffer, type);
    custody_put_u32(buffer, request_id);
}

static bool fits(struct custody_buffer *buffer, size_t count)
{
    if (buffer->length + count > sizeof(buffer->bytes)) {
        buffer->overflow = true;
        return false;
    }
    return true;
}

void custody_put_u8(struct custody_buffer *buffer, uint8_t value)
{
    if (!fits(buffer, 1)) return;
    buffer->bytes[buffer->length++] = value;
}

void custody_put_u32(struct custody_buffer *buffer, uint32_t value)
{
    for (int shift = 24; shift >= 0; shift -= 8) custody_put_u8(buffer, (uint8_t)(value >> shift));
}

void custody_put_u64(struct custody_buffer *buffer, uint64_t value)
{
    for (int shift = 56; shift >= 0; shift -= 8) custody_put_u8(buffer, (uint8_t)(value >> shift));
}

void custody_put_bytes(struct custody_buffer *buffer, const void *bytes, size_t length)
{
    if (length > 0xFFFF || !fits(buffer, 2 + length)) {
        buffer->overflow = true;
        return;
    }
    custody_put_u8(buffer, (uint8_t)(length >> 8));
    custody_put_u8(buffer, (uint8_t)length);
    if (length) memcpy(buffer->bytes + buffer->length, bytes, length);
    buffer->length += length;
}

uint8_t custody_get_u8(struct custody_buffer *buffer)
{
    if (buffer->position + 1 > buffer->length) {
        buffer->overflow = true;
        return 0;
    }
    return buffer->bytes[buffer->position++];
}

uint32_t custody_get_u32(struct custody_buffer *buffer)
{
    uint32_t value = 0;
    for (int i = 0; i < 4; i++) value = (value << 8) | custody_get_u8(buffer);
    return value;
}

uint64_t custody_get_u64(struct custody_buffer *buffer)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++) value = (value << 8) | custody_get_u8(buffer);
    return value;
}

void custody_get_string(struct custody_buffer *buffer, char *out, size_t capacity)
{
    size_t high = custody_get_u8(buffer);
    size_t length = (high << 8) | custody_get_u8(buffer);
    if (buffer->overflow || buffer->position + length > buffer->length) {
        buffer->overflow = true;
        if (capacity) out[0] = '\0';
        return;
    }
    size_t copied = length < capacity - 1 ? length : capacity - 1;
    memcpy(out, buffer->bytes + buffer->position, copied);
    out[copied] = '\0';
    buffer->position += length;
}

void custody_link_close(struct custody_link *link)
{
    if (link->descriptor >= 0) close(link->descriptor);
    link->descriptor = -1;
    link->pending_releases = 0;
    link->rx_start = 0;
    link->rx_end = 0;
}

static int fail(struct custody_link *link, const char *what)
{
    mosquitto_log_printf(MOSQ_LOG_ERR, "custody: ledger socket %s: %s (errno %d)", link->path, what, errno);
    custody_link_close(link);
    return -1;
}

static int link_open(struct custody_link *link)
{
    if (link->descriptor >= 0) return 0;
    struct sockaddr_un address;
    memset(&address, 0, sizeof(address));
    address.sun_family = AF_UNIX;
    if (strlen(link->path) >= sizeof(address.sun_path)) return fail(link, "path too long");
    strcpy(address.sun_path, link->path);
    int descriptor = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (descriptor < 0) return fail(link, "cannot make a socket");
    if (connect(descriptor, (struct sockaddr *)&address, sizeof(address)) != 0) {
        close(descriptor);
        return fail(link, "cannot connect");
    }
    link->descriptor = descriptor;
    mosquitto_log_printf(MOSQ_LOG_INFO, "custody: connected to the ledger socket %s", link->path);
    return 0;
}

/* Waits until the descriptor is ready for `events`, at most the link's timeout. */
static int wait_ready(struct custody_link *link, short events, int timeout_ms)
{
    struct pollfd ready = {.fd = link->descriptor, .events = events};
    for (;;) {
        int count = poll(&ready, 1, timeout_ms);
        if (count > 0) return 0;
        if (count == 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (errno != EINTR) return -1;
    }
}

static int write_all(struct custody_link *link, const uint8_t *bytes, size_t length)
{
    while (length > 0) {
        ssize_t written = send(link->descriptor, bytes, length, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (written < 0) {
            if (errno == EINTR) continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_ready(link, POLLOUT, link->timeout_ms) == 0) continue;
            return -1;
        }
        bytes += written;
        length -= (size_t)written;
    }
    return 0;
}

static uint64_t monotonic_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* Until `need` bytes are buffered (link->rx), receives whatever the socket has, polling it
 * for up to link->spin_us first and then sleeping in poll() for up to `timeout_ms`: an
 * answer that comes within the spin finds this thread awake. */
static int fill(struct custody_link *link, size_t need, int timeout_ms)
{
    if (link->rx_end - link->rx_start >= need) return 0;
    if (link->rx_start > 0) {
        memmove(link->rx, link->rx + link->rx_start, link->rx_end - link->rx_start);
        link->rx_end -= link->rx_start;
        link->rx_start = 0;
    }
    uint64_t spin_until = link->spin_us > 0 && link->spinning ? monotonic_us() + (uint64_t)link->spin_us : 0;
    while (link->rx_end < need) {
        ssize_t count = recv(link->descriptor, link->rx + link->rx_end, sizeof(link->rx) - link->rx_end, MSG_DONTWAIT);
        if (count == 0) {
            errno = ECONNRESET;
            return -1;
        }
        if (count < 0) {
            if (errno == EINTR) continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && spin_until && monotonic_us() < spin_until) continue;
            if ((errno == EAGAIN || errno == EWOULDBLOCK) && wait_ready(link, POLLIN, timeout_ms) == 0) continue;
            return -1;
        }
        link->rx_end += (size_t)count;
    }
    return 0;
}

/* Whether a whole frame is buffered. */
static bool frame_buffered(struct custody_link *link)
{
    size_t have = link->rx_end - link->rx_start;
    if (have < 4) return false;
    const uint8_t *p = link->rx + link->rx_start;
    uint32_t length = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    return have >= 4 + (size_t)length;
}

/* Reads one frame into link->in (position after the header); its type and request id out. */
static int read_frame(struct custody_link *link, uint8_t *type, uint32_t *request_id)
{
    if (fill(link, 4, link->timeout_ms) != 0) return fail(link, "no answer");
    const uint8_t *prefix = link->rx + link->rx_start;
    uint32_t length = ((uint32_t)prefix[0] << 24) | ((uint32_t)prefix[1] << 16) | ((uint32_t)prefix[2] << 8) | prefix[3];
    if (length < 6 || length > CUSTODY_WIRE_MAX_BODY) return fail(link, "frame of a bad length");
    if (fill(link, 4 + (size_t)length, link->timeout_ms) != 0) return fail(link, "frame cut short");
    memcpy(link->in.bytes, link->rx + link->rx_start + 4, length);
    link->rx_start += 4 + (size_t)length;
    link->in.length = length;
    link->in.position = 0;
    link->in.overflow = false;
    uint8_t version = custody_get_u8(&link->in);
    *type = custody_get_u8(&link->in);
    *request_id = custody_get_u32(&link->in);
    if (version != CUSTODY_WIRE_VERSION) return fail(link, "the ledger speaks another protocol version");
    return 0;
}

/* A notice, a release's answer or an error frame; 0 when handled, -1 when the link failed. */
static int handle_unsolicited(struct custody_link *link, uint8_t type)
{
    if (type == CUSTODY_RELEASE_ANSWER && link->pending_releases > 0) {
        link->pending_releases--;
        uint8_t outcome = custody_get_u8(&link->in);
        if (link->in.overflow) return fail(link, "malformed release answer");
        if (outcome == 2) mosquitto_log_printf(MOSQ_LOG_ERR, "custody: the ledger could not record a disconnection");
        return 0;
    }
    if (type == CUSTODY_TAKEN_OVER) {
        char session[65536];
        uint64_t connection = custody_get_u64(&link->in);
        custody_get_string(&link->in, session, sizeof(session));
        if (link->in.overflow) return fail(link, "malformed takeover notice");
        if (link->on_taken_over) link->on_taken_over(connection, session, link->notice_context);
        return 0;
    }
    if (type == CUSTODY_ERROR) {
        char detail[512];
        uint8_t code = custody_get_u8(&link->in);
        custody_get_string(&link->in, detail, sizeof(detail));
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: the ledger refused this plugin (error %u): %s", code, detail);
        custody_link_close(link);
        return -1;
    }
    return fail(link, "unexpected frame");
}

/* Opens the link if need be and writes `link->out` with its length. */
static int send_out(struct custody_link *link)
{
    if (link->out.overflow) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: request too large for the ledger protocol");
        return -1;
    }
    if (link_open(link) != 0) return -1;
    uint32_t body = (uint32_t)(link->out.length - 4);
    link->out.bytes[0] = (uint8_t)(body >> 24);
    link->out.bytes[1] = (uint8_t)(body >> 16);
    link->out.bytes[2] = (uint8_t)(body >> 8);
    link->out.bytes[3] = (uint8_t)body;
    if (write_all(link, link->out.bytes, link->out.length) != 0) return fail(link, "cannot send");
    return 0;
}

int custody_link_send(struct custody_link *link)
{
    if (send_out(link) != 0) return -1;
    link->pending_releases++;
    return 0;
}

int custody_link_call(struct custody_link *link, uint8_t expected)
{
    uint32_t sent_id = ((uint32_t)link->out.bytes[6] << 24) | ((uint32_t)link->out.bytes[7] << 16) |
                       ((uint32_t)link->out.bytes[8] << 8) | link->out.bytes[9];
    if (send_out(link) != 0) return -1;
    /* Only an authorization is answered without a commit, soon enough to be worth polling for. */
    link->spinning = expected == CUSTODY_AUTHORIZE_ANSWER;
    int result = -1;
    for (;;) {
        uint8_t type;
        uint32_t request_id;
        if (read_frame(link, &type, &request_id) != 0) break;
        if (type == expected && request_id == sent_id) {
            result = 0;
            break;
        }
        if (handle_unsolicited(link, type) != 0) break;
    }
    link->spinning = false;
    return result;
}

int custody_link_poll(struct custody_link *link)
{
    if (link->descriptor < 0) return 0;
    for (;;) {
        struct pollfd ready = {.fd = link->descriptor, .events = POLLIN};
        if (!frame_buffered(link) && poll(&ready, 1, 0) <= 0) return 0;
        uint8_t type;
        uint32_t request_id;
        if (read_frame(link, &type, &request_id) != 0) return -1;
        if (handle_unsolicited(link, type) != 0) return -1;
    }
}
