/*
 * Custody's Mosquitto plugin: Mosquitto 2.0 (plugin API version 5) asks Custody's session
 * ledger, over its Unix domain socket (`custody --ledger-socket PATH`), whether each CONNECT
 * may have its session, records each disconnection there, and asks it what each connection
 * may publish and subscribe to. The protocol is README.md's "The ledger socket".
 *
 * Mosquitto loads the library itself (`plugin /path/libcustody-mosquitto.so`,
 * `plugin_opt_socket /run/custody/ledger.sock`); these are the parts' shared declarations.
 */
#ifndef CUSTODY_MOSQUITTO_H
#define CUSTODY_MOSQUITTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mosquitto;

/* ---- The ledger protocol, version 1 (ledger_link.c) ---- */

#define CUSTODY_WIRE_VERSION 1
/* plugin_opt_spin_us when not given. */
#define CUSTODY_DEFAULT_SPIN_US 0
#define CUSTODY_WIRE_MAX_BODY (64 * 1024)

enum custody_frame_type {
    CUSTODY_CLAIM = 0x01,
    CUSTODY_RELEASE = 0x02,
    CUSTODY_AUTHORIZE = 0x03,
    CUSTODY_TAKEN_OVER = 0x04,
    CUSTODY_CLAIM_ANSWER = 0x81,
    CUSTODY_RELEASE_ANSWER = 0x82,
    CUSTODY_AUTHORIZE_ANSWER = 0x83,
    CUSTODY_ERROR = 0xFF,
};

/* A frame body being written or read: version, type, request id, then the fields. */
struct custody_buffer {
    uint8_t bytes[4 + CUSTODY_WIRE_MAX_BODY];
    size_t length;   /* written so far (including the length prefix) */
    size_t position; /* read so far */
    bool overflow;   /* a write did not fit, or a read ran past the end */
};

void custody_buffer_start(struct custody_buffer *buffer, uint8_t type, uint32_t request_id);
void custody_put_u8(struct custody_buffer *buffer, uint8_t value);
void custody_put_u32(struct custody_buffer *buffer, uint32_t value);
void custody_put_u64(struct custody_buffer *buffer, uint64_t value);
void custody_put_bytes(struct custody_buffer *buffer, const void *bytes, size_t length);
uint8_t custody_get_u8(struct custody_buffer *buffer);
uint32_t custody_get_u32(struct custody_buffer *buffer);
uint64_t custody_get_u64(struct custody_buffer *buffer);
/* A u16-length string, copied NUL-terminated into `out` (truncated to `capacity`). */
void custody_get_string(struct custody_buffer *buffer, char *out, size_t capacity);

/* Called for each takeover notice read while waiting for an answer. */
typedef void (*custody_notice_handler)(uint64_t connection, const char *session_name, void *context);

struct custody_link {
    char *path;
    int descriptor; /* -1: not connected */
    uint32_t next_request;
    int timeout_ms;
    /* Microseconds an authorization's answer is waited for with non-blocking reads before
     * blocking (0: block at once): an answer that comes sooner finds this thread running, not
     * asleep. A claim's answer waits for a durable commit: it is not spun for. */
    int spin_us;
    bool spinning;
    struct custody_buffer out;
    struct custody_buffer in;
    custody_notice_handler on_taken_over;
    void *notice_context;
    /* Releases sent and not answered yet: their answers are read on the way to later ones. */
    unsigned pending_releases;
    /* Bytes received and not framed yet, rx[rx_start, rx_end): a frame (or several) is read
     * with as few recv calls as the socket allows, usually one. */
    uint8_t rx[2 * (4 + CUSTODY_WIRE_MAX_BODY)];
    size_t rx_start;
    size_t rx_end;
};

/* Sends `link->out` (started with custody_buffer_start) and reads frames until the answer of
 * type `expected` with its request id; notices on the way go to `on_taken_over`. The answer's
 * fields are then read from `link->in`. Returns 0, or -1 when the link failed (it is closed
 * then; the reason is logged). */
int custody_link_call(struct custody_link *link, uint8_t expected);
/* Sends `link->out` without waiting for its answer (a release: Mosquitto's thread does not wait
 * for its commit; the answer is read with the next call or poll). -1: the link failed. */
int custody_link_send(struct custody_link *link);
/* Reads the notices and answers waiting on the socket without blocking. -1: the link failed. */
int custody_link_poll(struct custody_link *link);
void custody_link_close(struct custody_link *link);

/* ---- Connections granted by the ledger, by Mosquitto client (connections.c) ---- */

#define CUSTODY_ACL_CACHE 16

struct custody_acl_entry {
    char *topic;
    int access;
    bool allowed;
};

struct custody_connection {
    struct mosquitto *client;
    uint64_t connection;
    char *session_name;
    /* The ledger said another connection took the session (R4): nothing left to release. */
    bool taken_over;
    struct custody_acl_entry cache[CUSTODY_ACL_CACHE];
    unsigned cache_next;
    struct custody_connection *next;
};

struct custody_connection *custody_connection_add(struct mosquitto *client, uint64_t connection, const char *session);
struct custody_connection *custody_connection_find(const struct mosquitto *client);
struct custody_connection *custody_connection_by_number(uint64_t connection);
/* Takes the client's entry out of the table; the caller frees it. */
struct custody_connection *custody_connection_remove(const struct mosquitto *client);
void custody_connection_free(struct custody_connection *entry);
/* Empties the table; returns the session names of the entries that were not taken over
 * (malloc'd array of strdup'd names, `*count` of them), for the caller to kick and free. */
char **custody_connection_clear(size_t *count);
bool custody_connection_holds_session(const char *session);
/* 1: allowed, 0: denied, -1: not cached. */
int custody_acl_cached(struct custody_connection *entry, int access, const char *topic);
void custody_acl_remember(struct custody_connection *entry, int access, const char *topic, bool allowed);

#endif
