/* config.h - the engine's configuration: loading a Lua config file in a
 * state without io/os, and checking every key before anything starts.
 * An sl_config owns all its strings and arrays; sl_config_free releases
 * them. Relative paths are resolved against the config file's folder. */
#ifndef SL_CONFIG_H
#define SL_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "buf.h"
#include "cpus.h"
#include "keys.h"
#include "router.h"

#define SL_CONFIG_MAX_OUTPUTS 64
#define SL_CONFIG_MAX_WORKERS 64
#define SL_CONFIG_DEFAULT_PATH "sluice.conf.lua"

/* What a full queue does (queue.when_full); the queue (delivery/queue.c)
 * carries it out. */
enum sl_queue_policy {
  SL_QUEUE_BLOCK = 0,   /* producers wait: inputs stop reading */
  SL_QUEUE_DROP_NEWEST, /* the arriving event is dropped */
  SL_QUEUE_DROP_OLDEST, /* the oldest undelivered event is dropped */
  SL_QUEUE_SPILL        /* overflow to the output's disk buffer (buffer.c);
                           the queue itself treats it as block */
};

struct sl_queue_config {
  uint32_t max_events;           /* default 100000 */
  uint64_t max_bytes;            /* default 64 MiB */
  enum sl_queue_policy when_full; /* default block */
};

struct sl_output_buffer_config {
  int disk;                   /* buffer.type = "disk": durable buffer */
  char *path;                 /* default var/buffer/<output name> */
  uint64_t max_bytes;         /* default 1 GiB */
  int fsync;                  /* 0 never, 1 interval, 2 always */
  uint32_t fsync_interval_ms; /* default 1000 */
};

struct sl_retry_config {
  uint32_t initial_ms;     /* default 100 */
  uint32_t max_ms;         /* default 10000 */
  uint32_t max_attempts;   /* failed attempts before the dead letter; 0: no limit */
  uint32_t max_elapsed_ms; /* or time since the first failed attempt; 0: no limit */
  uint32_t timeout_ms;     /* tcp/unix: a connect, write or ack that takes
                              longer fails; default 30000, 0: none */
};

/* Circuit breaker: after failures consecutive failed attempts no attempt is
 * made for open_ms, then one probe decides (see retry.h). */
struct sl_breaker_config {
  uint32_t failures; /* default 5; 0 (or breaker = false): no breaker */
  uint32_t open_ms;  /* default 5000, or retry.max_ms when that is lower */
};

/* Token bucket on the delivery side (see worker/output.c). */
struct sl_rate_limit_config {
  uint32_t events_per_second; /* 0: no limit */
  uint32_t burst;             /* default events_per_second */
};

struct sl_dedup_config {
  uint32_t window_ms; /* 0: no dedup */
  uint32_t max_ids;   /* default 100000 */
};

/* A tls = {...} block (SL_KEY_TLS): the same keys on every network
 * endpoint. Listeners need cert_file and key_file; clients verify the
 * server's certificate and name unless verify_peer = false. */
struct sl_tls_config {
  int enabled;            /* a tls table was given */
  char *cert_file;        /* PEM chain; resolved path; may be NULL (client) */
  char *key_file;
  char *ca_file;          /* clients: CAs to trust (NULL: the system's) */
  char *client_ca_file;   /* listeners: CAs client certificates must chain
                             to (default ca_file); implies verify_peer */
  char *server_name;      /* clients: SNI and the name checked (default the
                             address's host) */
  char *ciphers;          /* OpenSSL cipher list (TLS 1.2); NULL: default */
  int verify_peer;        /* clients default 1; listeners default 0 */
  int min_version;        /* 0x0303 (TLS 1.2, default) or 0x0304 */
  uint32_t handshake_timeout_ms; /* default 10000 */
  char **allow_subjects;  /* listeners: accepted client CNs / SANs; NULL:
                             any the CA signed */
  int nallow;
};

struct sl_input_config {
  char *name;
  char *type;   /* "tcp", "unix", "http" */
  char *listen; /* tcp/http: "host:port"; unix: socket path */
  char *topic;  /* http: default topic for bare payloads; may be NULL */
  uint64_t max_body_bytes;  /* http; default 8 MiB */
  uint32_t idle_timeout_ms; /* connections idle this long are closed; http
                               default 60000, tcp/unix 0 (off) */
  char *bearer_token_file;  /* http auth; may be NULL */
  uint32_t max_connections;   /* open at once; default 1024 */
  uint32_t event_timeout_ms;  /* tcp/unix: a begun event must be complete
                                 within this; default 30000 */
  uint64_t max_pending_bytes; /* tcp/unix: partial events, http: bodies,
                                 over all connections; default 64 MiB */
  uint32_t header_timeout_ms; /* http: the request head from its first
                                 byte; 0: min(10 s, idle_timeout_ms) */
  uint32_t body_timeout_ms;   /* http: the body from the end of the head;
                                 default 60000 */
  struct sl_tls_config tls;   /* tcp, http */
  struct sl_config_value *values; /* its plugin's keys without a field */
  int nvalues;
  int retired; /* a reload's placeholder for an input that is gone or
                  going (worker/reload.c): name and type only */
};

struct sl_output_config {
  char *name;
  char *type;    /* "stdout", "file", "null", "tcp", "unix" */
  char *path;    /* file: path; unix: socket path */
  char *address; /* tcp: "host:port" */
  char *format;  /* "ndjson" (default) or "msgpack" */
  struct sl_queue_config queue;
  struct sl_output_buffer_config buffer; /* disk buffer or spill */
  struct sl_retry_config retry;
  struct sl_breaker_config breaker;
  struct sl_rate_limit_config rate_limit;
  struct sl_dedup_config dedup;
  uint32_t batch_events; /* events per write; default 1024 */
  int ack;               /* tcp/unix: wait for the peer's acks (a sluice) */
  int fsync;             /* file: fdatasync each batch before delivered */
  struct sl_tls_config tls; /* tcp */
  struct sl_config_value *values; /* its plugin's keys without a field */
  int nvalues;
  int retired; /* a reload's placeholder for an output that is gone or
                  draining: name and type only, never found by name */
  char *schema_file;         /* schema = "...": resolved; NULL: none */
  struct sl_schema *schema;  /* compiled from it (codec/schema.h) */
};

/* ---- schema contracts (schemas.c) -------------------------------------- */

struct sl_schema;

enum sl_schema_mode { SL_SCHEMA_ENFORCE = 0, SL_SCHEMA_WARN };

/* One version of a contract: schemas = { { topics = .., file = .. } }. */
struct sl_schema_version {
  char *version;            /* as written ("2", "2.1") */
  uint32_t code;            /* sl_config_version_parse */
  char *file;               /* resolved */
  struct sl_schema *schema; /* compiled at load */
};

/* The entries of schemas with the same topics glob: one contract. */
struct sl_schema_contract {
  char *topics;
  size_t topics_len;
  enum sl_schema_mode mode;       /* default enforce */
  char *version_header;           /* default "schema-version" */
  char *version_field;            /* a payload field instead; NULL: none */
  int default_version;            /* index in versions; -1: the newest */
  struct sl_schema_version *versions; /* oldest first */
  int nversions;
};

/* A version "MAJOR" or "MAJOR.MINOR" (decimal, each at most 32767) as a
 * nonzero code that keeps how it was written; "2" and "2.0" are the same
 * version. Returns 0 or SL_EINVAL. */
int sl_config_version_parse(const char *s, size_t n, uint32_t *code);
/* Codes in version order (for sorting and comparing). */
static inline uint32_t sl_config_version_order(uint32_t code) {
  return ((code >> 16) & 0x7fffu) << 15 | (code & 0x7fffu);
}
/* The code as written ("2", "2.1") into out (at least 12 bytes). */
static inline void sl_config_version_format(uint32_t code, char *out,
                                            size_t n) {
  if (code & 0x8000u)
    snprintf(out, n, "%u.%u", (code >> 16) & 0x7fffu, code & 0x7fffu);
  else
    snprintf(out, n, "%u", (code >> 16) & 0x7fffu);
}

struct sl_rules_config {
  char *dir;               /* NULL: no rules */
  int watch;               /* default 1 */
  uint32_t cpu_budget_ms;  /* default 10 */
  uint32_t memory_mb;      /* default 64 */
  uint32_t debounce_ms;    /* default 50 */
  char *on_error;          /* a rule's default error policy: "dead_letter"
                              (NULL means it), "drop" or "pass" */
  int persist;             /* snapshot() to the state folder; default 0 */
  uint32_t persist_interval_s; /* and every this often; default 60 */
  int jit;                 /* rules run compiled; default 0 (sandbox.h) */
};

struct sl_admin_config {
  char *listen;            /* NULL: no admin server */
  char *bearer_token_file; /* may be NULL */
  char **redact_headers;   /* tap: masked header names */
  int nredact;
  uint32_t max_connections; /* open at once; default 64 */
  int ready_requires_outputs; /* /readyz fails when every output does; 0 */
  struct sl_tls_config tls;
};

struct sl_config {
  char *path;       /* the file it came from */
  char *dir;        /* its folder, for relative paths */
  struct sl_input_config *inputs;
  int ninputs;
  struct sl_output_config *outputs;
  int noutputs;
  struct sl_router router; /* routes with output indices resolved */
  struct sl_rules_config rules;
  struct sl_admin_config admin;
  int dead_letter;          /* output index; -1 none */
  int unrouted; /* 1 + the index of the output for events nothing decided;
                   0: drop them (zeroed memory drops) */
  char *pid_file;           /* may be NULL */
  char *state_dir;          /* absolute; what the engine writes on its own
                               (pid, status, lock, dead letter, buffers);
                               default var/ beside the config */
  uint32_t shutdown_timeout_ms; /* default 10000 */
  int workers;                  /* rule threads incl. the main one; 1 */
  int workers_auto;             /* workers = "auto": cpus says from what */
  struct sl_cpus cpus;          /* set with workers_auto */
  int workers_balance; /* 1: buckets move to even the load (default) */
  uint32_t max_event_bytes;     /* default 1 MiB */
  int log_level;                /* -1: not set in the file */
  struct sl_schema_contract *schemas; /* payload contracts, in order */
  int nschemas;
};

/* Load and check the file at path; plugins (NULL-terminated, from the
 * registry in worker/plugins.c) say which input and output types exist
 * and which keys each takes. On error NULL is returned and err holds
 * one message per problem, each naming the file, the key path and what was
 * expected ("sluice.conf.lua: outputs[2].path: expected string, got nil").
 * All problems found are reported, not only the first. */
struct sl_config *sl_config_load(const char *path,
                                 const struct sl_config_plugin *const *plugins,
                                 struct sl_buf *err);

/* ---- comparing two configs (diff.c), for a whole-config reload ---------- */

/* Is every key of a the same as in b (resolved values, plugin keys)? */
int sl_config_input_same(const struct sl_input_config *a,
                         const struct sl_input_config *b);
int sl_config_output_same(const struct sl_output_config *a,
                          const struct sl_output_config *b);

/* Do the routes (topics, target names, rate limits) and the dead letter
 * (by name) of a and b read the same? */
int sl_config_routes_same(const struct sl_config *a, const struct sl_config *b);

/* The settings a running engine cannot take without a restart that differ
 * between a and b, appended to out as "admin.listen, rules.dir"; returns
 * how many. */
int sl_config_restart_diff(const struct sl_config *a, const struct sl_config *b,
                           struct sl_buf *out);

/* The Lua state a config file runs in: the pure libraries only (no I/O, no
 * loading). sl_config_load and sluice.testing's contracts use it. NULL when
 * out of memory. */
struct lua_State;
struct lua_State *sl_config_state(void);

/* Read the schemas list of the config table at t (in L, a lua_State)
 * into cfg->schemas and compile every schema (schemas.c). Errors are
 * appended to err as "file: schemas[2].file: ..."; returns how many. */
int sl_config_schemas(void *L, int t, const char *file, const char *dir,
                      struct sl_config *cfg, struct sl_buf *err);
void sl_config_schemas_free(struct sl_config *cfg);

struct sl_schema_error;

/* The first contract of cfg whose topics glob matches the topic (and its
 * index in *index when not NULL), or NULL. */
const struct sl_schema_contract *
sl_config_schema_find(const struct sl_config *cfg, const char *topic,
                      size_t len, int *index);

/* The index in k->versions of the version an event falls under: the one
 * it names (k's header in headers, or its payload field), else
 * default_version, else the newest. -1 when it names a version k lacks
 * or one that is no version: e says so. */
int sl_config_schema_version(const struct sl_schema_contract *k,
                             const uint8_t *headers, size_t hlen,
                             const uint8_t *payload, size_t plen,
                             struct sl_schema_error *e);

/* Release a config; NULL is a no-op. */
void sl_config_free(struct sl_config *c);

/* Index of the output called name, or -1. */
int sl_config_output_index(const struct sl_config *c, const char *name,
                           size_t len);

/* Split "host:port" ("[::1]:80" for IPv6) where host is an IP address or
 * localhost (given as 127.0.0.1). Returns 0 or SL_EINVAL. */
int sl_config_parse_hostport(const char *s, char *host, size_t hostlen,
                             int *port);

/* Can listeners on a and b not both be bound: the same port on the same
 * IP address or where either is a wildcard (0.0.0.0, ::), localhost being
 * 127.0.0.1? Strings that are not "host:port" (unix socket paths) collide
 * when equal. */
int sl_config_listen_collide(const char *a, const char *b);

/* Split "host:port" where host may also be a host name (checked for
 * syntax only, not resolved): what clients accept. Returns 0 or SL_EINVAL. */
int sl_config_split_hostport(const char *s, char *host, size_t hostlen,
                             int *port);

/* The longest string value the environment may make (bytes). */
#define SL_CONFIG_MAX_EXPANDED (64u * 1024)

/* Put the environment into s[0..len) (what sl_config_load does to every
 * string value of the config): ${NAME} is the variable's value (unset: an
 * error naming it), ${NAME:-default} the value or, when unset or empty, the
 * default (itself expanded; its braces must pair up, $} is a lone '}'),
 * $$ is a '$'; any other '$' stays. out is reset and gets the result.
 * Returns 0, SL_EINVAL (why: what is wrong and where), SL_E2BIG (longer
 * than SL_CONFIG_MAX_EXPANDED) or SL_ENOMEM. */
int sl_config_expand(const char *s, size_t len, struct sl_buf *out, char *why,
                     size_t whylen);

#endif
