/* keys.h - what a plugin declares to the config checker: its kind, its
 * type name and a table of its own keys (type, default, one-line doc,
 * where the value lands). The registry (worker/plugins.c) hands the list
 * down to sl_config_load; config never learns which plugins exist. */
#ifndef SL_CONFIG_KEYS_H
#define SL_CONFIG_KEYS_H

#include <stddef.h>
#include <stdint.h>

enum sl_config_key_type {
  SL_KEY_STRING,   /* a non-empty string; with choices, one of them */
  SL_KEY_BOOL,
  SL_KEY_UINT,     /* a whole number from min to max */
  SL_KEY_BYTES,    /* the same, or a size string ("64MiB") */
  SL_KEY_ENUM,     /* one of choices; the field gets values[i] (an int) */
  SL_KEY_ADDRESS,  /* "host:port" to listen on: an IP address or localhost */
  SL_KEY_PEER,     /* "host:port" to connect to: the host may be a name */
  SL_KEY_PATH,     /* a path, resolved against the config's folder */
  SL_KEY_FILE,     /* a path to a file the engine must be able to write */
  SL_KEY_SOCKET,   /* a unix socket path to listen on (resolved, checked) */
  SL_KEY_TLS,      /* a tls = {...} table (struct sl_tls_config field):
                      the same keys on every network endpoint, see
                      sl_config_tls_keys */
  SL_KEY_ARGV,     /* a list of 1..64 non-empty strings (a command's
                      argv): stored as the strings back to back, each
                      NUL-terminated, an empty one after the last */
  SL_KEY_HEADERS,  /* a table of header name = "value" (strings): stored
                      as "Name: value\n" lines; names are HTTP tokens,
                      values hold no CR or LF */
  SL_KEY_CORE      /* a key of the core's own tables that this plugin
                      honours (name "retry.timeout_ms"): listed, and other
                      plugins are refused it; the core reads it */
};

#define SL_KEY_REQUIRED 1u  /* nil is an error */
/* Other plugins of the same kind accept and ignore it: configs written
 * before each plugin had its own keys set it freely. New keys should not
 * carry it: a key a plugin does not declare is then an error. */
#define SL_KEY_TOLERATED 2u
/* SL_KEY_PATH of a file the plugin reads at start (a token, a password):
 * the checker refuses one it cannot read, as it does a tls file. */
#define SL_KEY_READ 4u
/* SL_KEY_TLS of an input that dials out (a broker client): client rules
 * (verify the server, server_name), not a listener's. */
#define SL_KEY_TLS_CLIENT 64u
/* SL_KEY_STRING that goes into a protocol line (an HTTP header): a value
 * holding CR, LF or NUL is refused, so neither the file nor ${ENV} (a
 * secret with a trailing newline) can end the line or add one. */
#define SL_KEY_ONE_LINE 128u

struct sl_config_key;

/* The value of a plugin key declared without a field (.field 0): a new
 * plugin keeps its keys here instead of in the shared config structs, and
 * reads them with sl_config_value_str / _num. Owned by the config. */
struct sl_config_value {
  const struct sl_config_key *key;
  char *str;    /* string, path, address keys (resolved); NULL when unset */
  uint64_t num; /* number and size keys */
  int flag;     /* bool keys, and the stored value of enum keys */
};

struct sl_config_key {
  const char *name;
  enum sl_config_key_type type;
  const char *def;  /* the default as the config would write it; NULL: none
                       (the field stays zero) */
  const char *doc;  /* one line, for `sluice plugins` and the README */
  unsigned flags;
  size_t field;     /* SL_KEY_FIELD: where the value lands in the kind's
                       config struct (sl_input_config, sl_output_config);
                       0: in its values list (struct sl_config_value) */
  size_t size;      /* of that field: numbers are 4 or 8 bytes */
  uint64_t min, max;                /* UINT, BYTES */
  const char *const *choices;       /* ENUM (and STRING): NULL-terminated */
  const int *values;                /* ENUM: what each choice stores */
};

/* Fills .field and .size; a field offset is stored plus one, so that a
 * table entry without a field (0) is told apart from the first member. */
#define SL_KEY_FIELD(st, member) \
  .field = offsetof(st, member) + 1, .size = sizeof(((st *)0)->member)

enum sl_plugin_kind { SL_PLUGIN_INPUT, SL_PLUGIN_OUTPUT };

struct sl_config_plugin {
  enum sl_plugin_kind kind;
  const char *type;                  /* the config's type = "..." */
  const char *doc;                   /* one line */
  const struct sl_config_key *keys;  /* ends with an entry without a name */
  /* Optional: what the keys must be taken together, beyond each key's own
   * type and range (a url's scheme, keys that exclude each other). Called
   * by sl_config_load for each input or output of this type whose keys
   * were read without error, so `sluice check` refuses what the plugin's
   * start would. conf is the kind's config struct (struct
   * sl_input_config, sl_output_config). Returns 0, or SL_EINVAL with why
   * in err (without the key path of the entry: the loader puts it in
   * front). Reads nothing but conf: no files, no network. */
  int (*check)(const void *conf, char *err, size_t errlen);
};

/* Name of a kind as the config spells it ("input", "output"). */
const char *sl_config_kind_name(enum sl_plugin_kind kind);

/* The plugin of that kind and type in list (NULL-terminated), or NULL. */
const struct sl_config_plugin *
sl_config_plugin_find(const struct sl_config_plugin *const *list,
                      enum sl_plugin_kind kind, const char *type);

/* Its key called name, or NULL. */
const struct sl_config_key *
sl_config_plugin_key(const struct sl_config_plugin *p, const char *name);

/* The keys the core reads for every plugin of that kind (name, type,
 * and for outputs queue, retry, ...), NULL-terminated. */
const char *const *sl_config_core_keys(enum sl_plugin_kind kind);

/* The value of key name in values[0, n) (the values field of an input or
 * output config): its string (NULL when unset without a default), or its
 * number (bool and enum keys: their flag; 0 when absent). */
const char *sl_config_value_str(const struct sl_config_value *values, int n,
                                const char *name);
uint64_t sl_config_value_num(const struct sl_config_value *values, int n,
                             const char *name);

/* The keys of a tls = {...} table, for `sluice plugins` and the README;
 * ends with an entry without a name. */
extern const struct sl_config_key sl_config_tls_keys[];

/* Name of a key type for people ("string", "bytes", ...). */
const char *sl_config_key_type_name(enum sl_config_key_type t);

#endif
