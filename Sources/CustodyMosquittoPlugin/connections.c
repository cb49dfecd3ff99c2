/*
 * The connections the ledger granted, by Mosquitto client (a hash of the client pointer):
 * the connection number a release names, the session, and the authorization answers cached
 * for that connection. Mosquitto runs the plugin on one thread: no locks.
 */
#include "custody_mosquitto.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BUCKETS 4096

static struct custody_connection *buckets[BUCKETS];

static size_t bucket_of(const struct mosquitto *client)
{
    uintptr_t value = (uintptr_t)client;
    value ^= value >> 17;
    value *= 0x9E3779B97F4A7C15ull;
    return (size_t)(value >> 40) % BUCKETS;
}

struct custody_connection *custody_connection_add(struct mosquitto *client, uint64_t connection, const char *session)
{
    struct custody_connection *entry = calloc(1, sizeof(*entry));
    if (!entry) return NULL;
    entry->session_name = strdup(session);
    if (!entry->session_name) {
        free(entry);
        return NULL;
    }
    entry->client = client;
    entry->connection = connection;
    size_t bucket = bucket_of(client);
    entry->next = buckets[bucket];
    buckets[bucket] = entry;
    return entry;
}

struct custody_connection *custody_connection_find(const struct mosquitto *client)
{
    for (struct custody_connection *entry = buckets[bucket_of(client)]; entry; entry = entry->next) {
        if (entry->client == client) return entry;
    }
    return NULL;
}

struct custody_connection *custody_connection_by_number(uint64_t connection)
{
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        for (struct custody_connection *entry = buckets[bucket]; entry; entry = entry->next) {
            if (entry->connection == connection) return entry;
        }
    }
    return NULL;
}

bool custody_connection_holds_session(const char *session)
{
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        for (struct custody_connection *entry = buckets[bucket]; entry; entry = entry->next) {
            if (!entry->taken_over && strcmp(entry->session_name, session) == 0) return true;
        }
    }
    return false;
}

struct custody_connection *custody_connection_remove(const struct mosquitto *client)
{
    struct custody_connection **link = &buckets[bucket_of(client)];
    for (; *link; link = &(*link)->next) {
        if ((*link)->client == client) {
            struct custody_connection *entry = *link;
            *link = entry->next;
            entry->next = NULL;
            return entry;
        }
    }
    return NULL;
}

void custody_connection_free(struct custody_connection *entry)
{
    if (!entry) return;
    for (unsigned i = 0; i < CUSTODY_ACL_CACHE; i++) free(entry->cache[i].topic);
    free(entry->session_name);
    free(entry);
}

char **custody_connection_clear(size_t *count)
{
    size_t total = 0;
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        for (struct custody_connection *entry = buckets[bucket]; entry; entry = entry->next) total++;
    }
    char **names = calloc(total ? total : 1, sizeof(char *));
    size_t kept = 0;
    for (size_t bucket = 0; bucket < BUCKETS; bucket++) {
        struct custody_connection *entry = buckets[bucket];
        buckets[bucket] = NULL;
        while (entry) {
            struct custody_connection *next = entry->next;
            if (names && !entry->taken_over) {
                names[kept++] = entry->session_name;
                entry->session_name = NULL;
            }
            custody_connection_free(entry);
            entry = next;
        }
    }
    *count = kept;
    return names;
}

int custody_acl_cached(struct custody_connection *entry, int access, const char *topic)
{
    for (unsigned i = 0; i < CUSTODY_ACL_CACHE; i++) {
        struct custody_acl_entry *cached = &entry->cache[i];
        if (cached->topic && cached->access == access && strcmp(cached->topic, topic) == 0) return cached->allowed ? 1 : 0;
    }
    return -1;
}

void custody_acl_remember(struct custody_connection *entry, int access, const char *topic, bool allowed)
{
    struct custody_acl_entry *slot = &entry->cache[entry->cache_next];
    char *copy = strdup(topic);
    if (!copy) return;
    free(slot->topic);
    slot->topic = copy;
    slot->access = access;
    slot->allowed = allowed;
    entry->cache_next = (entry->cache_next + 1) % CUSTODY_ACL_CACHE;
}
