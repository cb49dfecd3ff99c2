/*
 * Mosquitto 2.0 plugin (API version 5): Custody's session ledger decides every CONNECT.
 *
 *   MOSQ_EVT_BASIC_AUTH  claims the session (Username = authentication name, ClientID =
 *                        session name) and waits for the durable answer: success, or
 *                        MOSQ_ERR_AUTH for every refusal, and for a ledger that cannot answer.
 *   MOSQ_EVT_DISCONNECT  releases the session, with the reason mapped to the ledger's (sent
 *                        without waiting: Mosquitto's thread waits for claims only).
 *   MOSQ_EVT_ACL_CHECK   asks the authorization decision for a publish or a subscribe,
 *                        cached per connection.
 *   MOSQ_EVT_TICK        reads takeover notices and release answers, and disconnects clients the ledger no longer
 *                        knows (the socket failed: nothing is held off the ledger).
 *
 * Options: plugin_opt_socket PATH (required), plugin_opt_timeout_ms N (default 5000),
 * plugin_opt_spin_us N (0-1000, default 0: microseconds an authorization's answer is polled for
 * before the thread sleeps; helps authorizations that come back to back).
 */
#include "custody_mosquitto.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>

/* The ledger's DisconnectReason raw values (LedgerCore/LedgerEvent.swift). */
enum {
    CLIENT_INITIATED_DISCONNECT = 1,
    CONNECTION_LOST = 2,
    CLIENT_ERROR = 4,
    CLIENT_AUTHENTICATION_ERROR = 5,
    CLIENT_AUTHORIZATION_ERROR = 6,
    SERVER_INITIATED_DISCONNECT = 7,
    SERVER_ERROR = 8,
};

struct plugin_state {
    mosquitto_plugin_id_t *identifier;
    struct custody_link link;
    /* The ClientID of the CONNECT being claimed (its own takeover is Mosquitto's to close). */
    const char *claiming;
    /* Session names whose Mosquitto clients must be disconnected at the next tick. */
    char **kicks;
    size_t kick_count, kick_capacity;
    /* How long claims held Mosquitto's thread. */
    uint64_t claims, claim_ns_total, claim_ns_max;
    /* When the socket was last read at a tick (Mosquitto ticks at every turn of its loop). */
    uint64_t polled_ns;
};

/* Notices and release answers are read at most this often between requests. */
#define POLL_INTERVAL_NS 10000000ull

static struct plugin_state *state;

static uint64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000ull + (uint64_t)now.tv_nsec;
}

static void schedule_kick(char *session)
{
    if (state->kick_count == state->kick_capacity) {
        size_t capacity = state->kick_capacity ? state->kick_capacity * 2 : 16;
        char **grown = realloc(state->kicks, capacity * sizeof(char *));
        if (!grown) {
            free(session);
            return;
        }
        state->kicks = grown;
        state->kick_capacity = capacity;
    }
    state->kicks[state->kick_count++] = session;
}

/* The socket failed: the ledger records the end of every connection it granted us (it saw
 * us go), so every such client is disconnected at the next tick. */
static void link_lost(void)
{
    size_t count = 0;
    char **names = custody_connection_clear(&count);
    if (count) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: ledger link lost; disconnecting %zu clients it no longer records", count);
    }
    for (size_t i = 0; i < count; i++) schedule_kick(names[i]);
    free(names);
}

/* R4 from the ledger: one of our connections lost its session. If the claim that took it is
 * the CONNECT Mosquitto is handling now (same ClientID), Mosquitto closes the old connection
 * itself; otherwise (another front, another Mosquitto) it is disconnected at the next tick. */
static void taken_over(uint64_t connection, const char *session, void *context)
{
    (void)context;
    struct custody_connection *entry = custody_connection_by_number(connection);
    if (!entry) return;
    entry->taken_over = true;
    if (state->claiming && strcmp(state->claiming, session) == 0) return;
    char *copy = strdup(session);
    if (copy) schedule_kick(copy);
}

static int call(uint8_t expected)
{
    if (custody_link_call(&state->link, expected) == 0) return 0;
    link_lost();
    return -1;
}

static int on_basic_auth(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)userdata;
    struct mosquitto_evt_basic_auth *auth = event_data;
    uint64_t started = now_ns();
    const char *client_id = mosquitto_client_id(auth->client);
    const char *address = mosquitto_client_address(auth->client);
    int version = mosquitto_client_protocol_version(auth->client);
    bool clean = mosquitto_client_clean_session(auth->client);
    if (!client_id) client_id = "";
    /* The plugin API does not show a v5 CONNECT's Session Expiry Interval: a session that is
     * not clean asks for the longest the namespace allows, as a 3.1.1 one does. */
    uint32_t expiry = clean ? 0 : UINT32_MAX;

    struct custody_buffer *out = &state->link.out;
    custody_buffer_start(out, CUSTODY_CLAIM, ++state->link.next_request);
    uint8_t flags = (clean ? 1 : 0) | (auth->username ? 2 : 0) | (auth->password ? 4 : 0);
    custody_put_u8(out, flags);
    custody_put_u8(out, (uint8_t)(version >= 3 && version <= 5 ? version : 4));
    custody_put_u32(out, expiry);
    custody_put_bytes(out, client_id, strlen(client_id));
    if (auth->username) custody_put_bytes(out, auth->username, strlen(auth->username));
    if (auth->password) custody_put_bytes(out, auth->password, strlen(auth->password));
    custody_put_bytes(out, address ? address : "", address ? strlen(address) : 0);

    state->claiming = client_id;
    int failed = call(CUSTODY_CLAIM_ANSWER);
    state->claiming = NULL;
    if (failed) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: CONNECT of %s refused: the ledger could not decide it", client_id);
        return MOSQ_ERR_AUTH;
    }
    struct custody_buffer *in = &state->link.in;
    uint8_t outcome = custody_get_u8(in);
    uint8_t rejection = custody_get_u8(in);
    uint8_t reason_code = custody_get_u8(in);
    (void)custody_get_u8(in); /* session present: Mosquitto keeps its own sessions */
    uint64_t connection = custody_get_u64(in);
    (void)custody_get_u64(in); /* sequence */
    (void)custody_get_u32(in); /* expiry interval */
    (void)custody_get_u64(in); /* replaced connection: Mosquitto closes it (same ClientID) */
    if (in->overflow) {
        custody_link_close(&state->link);
        link_lost();
        return MOSQ_ERR_AUTH;
    }
    uint64_t held = now_ns() - started;
    state->claims++;
    state->claim_ns_total += held;
    if (held > state->claim_ns_max) state->claim_ns_max = held;
    if (outcome != 0) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "custody: CONNECT of %s refused by the ledger (%s, reason %u, code 0x%02x)",
                             client_id, outcome == 1 ? "rejected" : "not recorded", rejection, reason_code);
        return MOSQ_ERR_AUTH;
    }
    struct custody_connection *old = custody_connection_remove(auth->client);
    custody_connection_free(old);
    if (!custody_connection_add(auth->client, connection, client_id)) return MOSQ_ERR_AUTH;
    return MOSQ_ERR_SUCCESS;
}

static uint8_t disconnect_reason(int reason)
{
    switch (reason) {
    case MOSQ_ERR_SUCCESS: return CLIENT_INITIATED_DISCONNECT;
    case MOSQ_ERR_AUTH: return CLIENT_AUTHENTICATION_ERROR;
    case MOSQ_ERR_ACL_DENIED: return CLIENT_AUTHORIZATION_ERROR;
    case MOSQ_ERR_PROTOCOL:
    case MOSQ_ERR_MALFORMED_PACKET:
    case MOSQ_ERR_MALFORMED_UTF8:
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
    case MOSQ_ERR_DUPLICATE_PROPERTY:
    case MOSQ_ERR_TOPIC_ALIAS_INVALID:
    case MOSQ_ERR_QOS_NOT_SUPPORTED:
    case MOSQ_ERR_RETAIN_NOT_SUPPORTED: return CLIENT_ERROR;
    case MOSQ_ERR_ADMINISTRATIVE_ACTION: return SERVER_INITIATED_DISCONNECT;
    case MOSQ_ERR_NOMEM: return SERVER_ERROR;
    default: return CONNECTION_LOST; /* lost, keep-alive timeout, I/O error */
    }
}

static int on_disconnect(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)userdata;
    struct mosquitto_evt_disconnect *gone = event_data;
    struct custody_connection *entry = custody_connection_remove(gone->client);
    if (!entry) return MOSQ_ERR_SUCCESS;
    if (!entry->taken_over) {
        const char *address = mosquitto_client_address(gone->client);
        struct custody_buffer *out = &state->link.out;
        custody_buffer_start(out, CUSTODY_RELEASE, ++state->link.next_request);
        custody_put_u64(out, entry->connection);
        custody_put_u8(out, disconnect_reason(gone->reason));
        custody_put_u8(out, 0);
        custody_put_u32(out, 0);
        custody_put_bytes(out, entry->session_name, strlen(entry->session_name));
        custody_put_bytes(out, address ? address : "", address ? strlen(address) : 0);
        /* Not waited for: the ledger records it in order, before any later claim's answer. */
        if (custody_link_send(&state->link) != 0) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "custody: the end of %s's connection %llu was not sent to the ledger",
                                 entry->session_name, (unsigned long long)entry->connection);
            link_lost();
        }
    }
    custody_connection_free(entry);
    return MOSQ_ERR_SUCCESS;
}

static int on_acl_check(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)userdata;
    struct mosquitto_evt_acl_check *check = event_data;
    /* Reading is decided at SUBSCRIBE; an UNSUBSCRIBE takes nothing. */
    if (check->access == MOSQ_ACL_READ || check->access == MOSQ_ACL_UNSUBSCRIBE) return MOSQ_ERR_SUCCESS;
    if (check->access != MOSQ_ACL_WRITE && check->access != MOSQ_ACL_SUBSCRIBE) return MOSQ_ERR_ACL_DENIED;
    struct custody_connection *entry = custody_connection_find(check->client);
    if (!entry || entry->taken_over || !check->topic) return MOSQ_ERR_ACL_DENIED;
    int cached = custody_acl_cached(entry, check->access, check->topic);
    if (cached >= 0) return cached ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
    struct custody_buffer *out = &state->link.out;
    custody_buffer_start(out, CUSTODY_AUTHORIZE, ++state->link.next_request);
    custody_put_u64(out, entry->connection);
    custody_put_u8(out, check->access == MOSQ_ACL_WRITE ? 1 : 2);
    custody_put_bytes(out, check->topic, strlen(check->topic));
    uint64_t connection = entry->connection;
    if (call(CUSTODY_AUTHORIZE_ANSWER) != 0) return MOSQ_ERR_ACL_DENIED;
    bool allowed = custody_get_u8(&state->link.in) == 1 && !state->link.in.overflow;
    /* The entry may have gone meanwhile (a notice); look it up again before caching. */
    entry = custody_connection_find(check->client);
    if (entry && entry->connection == connection) custody_acl_remember(entry, check->access, check->topic, allowed);
    return allowed ? MOSQ_ERR_SUCCESS : MOSQ_ERR_ACL_DENIED;
}

static int on_tick(int event, void *event_data, void *userdata)
{
    (void)event;
    (void)event_data;
    (void)userdata;
    uint64_t now = now_ns();
    if (now - state->polled_ns >= POLL_INTERVAL_NS) {
        state->polled_ns = now;
        if (custody_link_poll(&state->link) != 0) link_lost();
    }
    if (!state->kick_count) return MOSQ_ERR_SUCCESS;
    size_t count = state->kick_count;
    char **kicks = state->kicks;
    state->kicks = NULL;
    state->kick_count = state->kick_capacity = 0;
    for (size_t i = 0; i < count; i++) {
        /* A client that connected again meanwhile holds a new grant: it stays. */
        if (!custody_connection_holds_session(kicks[i])) mosquitto_kick_client_by_clientid(kicks[i], false);
        free(kicks[i]);
    }
    free(kicks);
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_version(int supported_version_count, const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++) {
        if (supported_versions[i] == 5) return 5;
    }
    return -1;
}

int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata, struct mosquitto_opt *options, int option_count)
{
    const char *path = NULL;
    int timeout_ms = 5000;
    int spin_us = CUSTODY_DEFAULT_SPIN_US;
    for (int i = 0; i < option_count; i++) {
        if (strcmp(options[i].key, "socket") == 0) {
            path = options[i].value;
        } else if (strcmp(options[i].key, "timeout_ms") == 0) {
            timeout_ms = atoi(options[i].value);
            if (timeout_ms < 1 || timeout_ms > 600000) {
                mosquitto_log_printf(MOSQ_LOG_ERR, "custody: plugin_opt_timeout_ms must be 1-600000, got %s", options[i].value);
                return MOSQ_ERR_INVAL;
            }
        } else if (strcmp(options[i].key, "spin_us") == 0) {
            char *end = NULL;
            long value = strtol(options[i].value, &end, 10);
            if (!end || *end || value < 0 || value > 1000) {
                mosquitto_log_printf(MOSQ_LOG_ERR, "custody: plugin_opt_spin_us must be 0-1000, got %s", options[i].value);
                return MOSQ_ERR_INVAL;
            }
            spin_us = (int)value;
        } else {
            mosquitto_log_printf(MOSQ_LOG_ERR, "custody: unknown option plugin_opt_%s (known: socket, timeout_ms, spin_us)", options[i].key);
            return MOSQ_ERR_INVAL;
        }
    }
    if (!path || !*path) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: plugin_opt_socket (the ledger socket's path) is required");
        return MOSQ_ERR_INVAL;
    }
    state = calloc(1, sizeof(*state));
    if (!state) return MOSQ_ERR_NOMEM;
    state->identifier = identifier;
    state->link.path = strdup(path);
    state->link.descriptor = -1;
    state->link.timeout_ms = timeout_ms;
    state->link.spin_us = spin_us;
    state->link.on_taken_over = taken_over;
    *userdata = state;
    int rc = mosquitto_callback_register(identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL, state);
    if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL, state);
    if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL, state);
    if (rc == MOSQ_ERR_SUCCESS) rc = mosquitto_callback_register(identifier, MOSQ_EVT_TICK, on_tick, NULL, state);
    if (rc != MOSQ_ERR_SUCCESS) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "custody: cannot register the plugin's callbacks (%d)", rc);
        return rc;
    }
    mosquitto_log_printf(MOSQ_LOG_INFO, "custody: sessions decided by the ledger at %s (timeout %d ms)", path, timeout_ms);
    return MOSQ_ERR_SUCCESS;
}

int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options, int option_count)
{
    (void)userdata;
    (void)options;
    (void)option_count;
    if (!state) return MOSQ_ERR_SUCCESS;
    mosquitto_callback_unregister(state->identifier, MOSQ_EVT_BASIC_AUTH, on_basic_auth, NULL);
    mosquitto_callback_unregister(state->identifier, MOSQ_EVT_ACL_CHECK, on_acl_check, NULL);
    mosquitto_callback_unregister(state->identifier, MOSQ_EVT_DISCONNECT, on_disconnect, NULL);
    mosquitto_callback_unregister(state->identifier, MOSQ_EVT_TICK, on_tick, NULL);
    if (state->claims) {
        mosquitto_log_printf(MOSQ_LOG_INFO, "custody: claims=%llu mean_us=%.1f max_us=%.1f",
                             (unsigned long long)state->claims,
                             (double)state->claim_ns_total / (double)state->claims / 1000.0,
                             (double)state->claim_ns_max / 1000.0);
    }
    /* Closing the socket ends the connections the ledger granted us (recorded as lost). */
    custody_link_close(&state->link);
    size_t count = 0;
    char **names = custody_connection_clear(&count);
    for (size_t i = 0; i < count; i++) free(names[i]);
    free(names);
    for (size_t i = 0; i < state->kick_count; i++) free(state->kicks[i]);
    free(state->kicks);
    free(state->link.path);
    free(state);
    state = NULL;
    return MOSQ_ERR_SUCCESS;
}
