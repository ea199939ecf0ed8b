/* route.c - `sluice route` and `sluice status`; see route.h. The dry run
 * drives the same rule set code as the engine, without a loop: emitted
 * events are collected and printed with the decision that caused them. */
#include "route.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "plugins.h"
#include "rules.h"
#include "schemas.h"
#include "state.h"

struct emitted {
  struct sl_buf json; /* ,{"output":..,"event":..} items */
  const struct sl_config *cfg;
};

static void on_emit(void *data, int output, struct sl_event *ev) {
  struct emitted *e = data;
  const char *name;
  char why[600];
  /* an emitted event that does not fit its output's schema goes to the
   * dead letter, as the engine sends it (sl_schemas_emitted) */
  ev = sl_schemas_emit_to(e->cfg, &output, ev, why, sizeof(why), NULL, NULL);
  if (ev == NULL)
    return; /* no dead letter: the engine drops it (counted) */
  name = e->cfg->outputs[output].name;
  if (e->json.len)
    sl_buf_putc(&e->json, ',');
  sl_buf_append(&e->json, "{\"output\":", 10);
  sl_codec_json_str(&e->json, name, strlen(name)); /* names are not checked */
  sl_buf_append(&e->json, ",\"event\":", 9);
  if (sl_codec_to_json(ev->data, ev->len, &e->json) != 0)
    sl_buf_append(&e->json, "null", 4); /* the line stays JSON */
  sl_buf_putc(&e->json, '}');
  sl_event_unref(ev);
}

/* `sluice check --events`: print only what fails the gate, count all */
static struct {
  int on;
  uint64_t counts[5]; /* by outcome; [4]: invalid */
} gate;

static void gate_line(uint64_t index, const char *what, const char *topic,
                      const char *reason) {
  printf("event %llu: %s%s%s%s%s\n", (unsigned long long)index + 1, what,
         topic ? " topic=" : "", topic ? topic : "", reason ? ": " : "",
         reason ? reason : "");
}

static void print_error(uint64_t index, const char *msg) {
  struct sl_buf b;
  if (gate.on) {
    gate.counts[4]++;
    gate_line(index, "invalid", NULL, msg);
    return;
  }
  sl_buf_init(&b);
  sl_buf_printf(&b, "{\"index\":%llu,\"decision\":\"invalid\",\"error\":",
                (unsigned long long)index);
  sl_codec_json_str(&b, msg, strlen(msg));
  sl_buf_append(&b, "}\n", 2);
  fwrite(b.data, 1, b.len, stdout);
  sl_buf_close(&b);
}

/* The payload contract of ev's topic, as a stream input applies it
 * (sl_schemas_ingest): 1 when it refuses ev (r decided: the dead letter's
 * copy with sluice-error), 0 when the rules go on (why set in warn mode).
 * Either way the version is stamped, for rules that read
 * ev.schema_version. */
static int dry_ingest(const struct sl_config *cfg, struct sl_event *ev,
                      struct sl_rules_result *r, char *why, size_t n) {
  struct sl_schema_verdict v;
  enum sl_schema_result res = sl_schemas_verdict(
      cfg, sl_event_topic(ev),
      ev->headers_len ? ev->data + ev->headers_off : NULL, ev->headers_len,
      ev->payload_len ? ev->data + ev->payload_off : NULL, ev->payload_len,
      &v, NULL);
  why[0] = '\0';
  if (v.version >= 0)
    ev->schema_version = v.contract->versions[v.version].code;
  if (res != SL_SCHEMA_INVALID && res != SL_SCHEMA_WARNED)
    return 0;
  sl_schemas_describe(&v, why, n);
  if (res == SL_SCHEMA_WARNED)
    return 0;
  memset(r, 0, sizeof(*r));
  r->route = -1;
  sl_schemas_refuse(cfg, r, ev, why, NULL);
  return 1;
}

/* After the rules, as sl_schemas_outputs: a target whose schema the
 * event does not fit leaves the targets, and the dead letter takes a copy
 * with sluice-error and sluice-output (the decision, when no target is
 * left). */
static void dry_outputs(const struct sl_config *cfg,
                        struct sl_rules_result *r, char *why, size_t n) {
  const char *name = sl_schemas_keep_fitting(cfg, r, why, n, NULL, NULL);

  if (name == NULL)
    return;
  if (r->ntargets == 0) {
    sl_schemas_refuse(cfg, r, r->event, why, name);
    return;
  }
  /* the event goes on; the dead letter takes a copy beside */
  if (cfg->dead_letter >= 0)
    r->targets[r->ntargets++] = (uint16_t)cfg->dead_letter;
}

/* Decide the event in p[0, len), the index-th of the input, and print the
 * outcome. An event that is no valid event map is printed as invalid,
 * placed by line (NDJSON: line, 1-based, of the user's file) or, for a
 * msgpack stream (line 0), by its byte offset in the stream (at + the
 * offset within the event): the offset into the msgpack an NDJSON line
 * became means nothing to whoever wrote the line. */
static void decide_one(struct sl_rules *rs, struct emitted *em,
                       struct sl_idgen *g, uint64_t index, const uint8_t *p,
                       size_t len, uint64_t line, size_t at) {
  static const char *const outcomes[] = {"routed", "unrouted", "dropped",
                                         "failed"};
  struct sl_codec_error err;
  struct sl_event_view v;
  struct sl_rules_result r;
  struct sl_event *ev;
  struct sl_buf b;
  char schema[600], schema_out[600];
  int i;

  schema_out[0] = '\0';
  if (sl_codec_parse_event(p, len, &v, &err) != 0) {
    char msg[256];
    if (line)
      snprintf(msg, sizeof(msg), "line %llu: %s", (unsigned long long)line,
               err.msg);
    else
      snprintf(msg, sizeof(msg), "byte %zu: %s", at + err.offset, err.msg);
    print_error(index, msg);
    return;
  }
  ev = sl_event_from_view(g, &v, 1);
  if (ev == NULL) {
    print_error(index, "out of memory");
    return;
  }
  sl_buf_reset(&em->json);
  if (!dry_ingest(em->cfg, ev, &r, schema, sizeof(schema))) {
    sl_rules_decide(rs, ev, &r);
    if (r.outcome == SL_RULES_ROUTED)
      dry_outputs(em->cfg, &r, schema_out, sizeof(schema_out));
  }
  if (schema_out[0])
    memcpy(schema, schema_out, sizeof(schema));
  if (gate.on) {
    struct sl_str t = sl_event_topic(r.event);
    char topic[256];
    snprintf(topic, sizeof(topic), "%.*s", (int)t.len, t.p);
    gate.counts[r.outcome]++;
    if (r.outcome == SL_RULES_FAILED || r.outcome == SL_RULES_UNROUTED)
      gate_line(index, outcomes[r.outcome], topic,
                r.outcome == SL_RULES_FAILED ? r.reason
                                             : "no rule or route decided it");
    sl_event_unref(r.event);
    return;
  }
  sl_buf_init(&b);
  sl_buf_printf(&b, "{\"index\":%llu,\"decision\":\"%s\",\"outputs\":[",
                (unsigned long long)index, outcomes[r.outcome]);
  for (i = 0; i < r.ntargets; i++) {
    if (i)
      sl_buf_putc(&b, ',');
    const char *name = em->cfg->outputs[r.targets[i]].name;
    sl_codec_json_str(&b, name, strlen(name));
  }
  sl_buf_append(&b, "],\"rule\":", 9);
  if (r.rule)
    sl_codec_json_str(&b, r.rule, strlen(r.rule));
  else
    sl_buf_append(&b, "null", 4);
  sl_buf_append(&b, ",\"reason\":", 10);
  if (r.reason)
    sl_codec_json_str(&b, r.reason, strlen(r.reason));
  else
    sl_buf_append(&b, "null", 4);
  if (schema[0]) { /* why it did not fit a contract, when it did not */
    sl_buf_append(&b, ",\"schema\":", 10);
    sl_codec_json_str(&b, schema, strlen(schema));
  }
  sl_buf_append(&b, ",\"event\":", 9);
  if (sl_codec_to_json(r.event->data, r.event->len, &b) != 0)
    sl_buf_append(&b, "null", 4); /* the line stays JSON */
  sl_buf_append(&b, ",\"emitted\":[", 12);
  sl_buf_append(&b, em->json.data, em->json.len);
  sl_buf_append(&b, "]}\n", 3);
  fwrite(b.data, 1, b.len, stdout);
  sl_buf_close(&b);
  sl_event_unref(r.event);
}

static int read_all(FILE *f, struct sl_buf *in) {
  char chunk[65536];
  size_t n;
  while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
    if (sl_buf_append(in, chunk, n) != 0)
      return SL_ENOMEM;
  return ferror(f) ? SL_EIO : 0;
}

int sl_route_main(const char *config, const char *path) {
  struct sl_buf errb, in, mp;
  struct sl_config *cfg;
  struct sl_rules *rs;
  struct sl_idgen g;
  struct emitted em;
  struct sl_rules_owner owner;
  char err[1024];
  FILE *f;
  size_t pos = 0, i;
  uint64_t index = 0, line = 1;
  int rc = 0;

  sl_buf_init(&errb);
  cfg = sl_config_load(config, sl_plugins, &errb);
  if (cfg == NULL) {
    fprintf(stderr, "%.*s", (int)errb.len, (const char *)errb.data);
    sl_buf_close(&errb);
    return 1;
  }
  sl_buf_close(&errb);
  sl_idgen_init(&g);
  memset(&em, 0, sizeof(em));
  sl_buf_init(&em.json);
  em.cfg = cfg;
  owner.data = &em;
  owner.emit = on_emit;
  owner.reload = NULL; /* no loop, no watcher: never called */
  owner.quiet = 0;
  rs = sl_rules_new(cfg, NULL, &g, &owner, err, sizeof(err));
  if (rs == NULL) {
    fprintf(stderr, "%s\n", err);
    sl_config_free(cfg);
    return 1;
  }
  f = path && strcmp(path, "-") != 0 ? fopen(path, "rb") : stdin;
  if (f == NULL) {
    fprintf(stderr, "sluice: cannot open %s: %s\n", path, strerror(errno));
    rc = 1;
    goto done;
  }
  sl_buf_init(&in);
  sl_buf_init(&mp);
  if (read_all(f, &in) != 0) {
    fprintf(stderr, "sluice: cannot read %s\n", path ? path : "stdin");
    rc = 1;
  }
  if (f != stdin)
    fclose(f);
  while (pos < in.len && (in.data[pos] == ' ' || in.data[pos] == '\n' ||
                          in.data[pos] == '\r' || in.data[pos] == '\t'))
    pos++;
  if (pos < in.len && in.data[pos] == '{') {
    /* NDJSON: one event per line; errors name the file's line, blank lines
     * (skipped, no event) counted */
    for (i = 0; i < pos; i++)
      line += in.data[i] == '\n';
    while (pos < in.len) {
      size_t end = pos, last;
      char jerr[256];
      while (end < in.len && in.data[end] != '\n')
        end++;
      /* a line of white space (a CRLF file's empty line is "\r") is blank,
       * no event, as the stdin input reads it */
      for (last = end; last > pos && (in.data[last - 1] == '\r' ||
                                      in.data[last - 1] == ' ' ||
                                      in.data[last - 1] == '\t');)
        last--;
      if (last > pos) {
        sl_buf_reset(&mp);
        if (sl_json_to_msgpack((const char *)in.data + pos, last - pos, &mp,
                               jerr, sizeof(jerr)) != 0) {
          char msg[300];
          snprintf(msg, sizeof(msg), "line %llu: %s",
                   (unsigned long long)line, jerr);
          print_error(index, msg);
        } else {
          decide_one(rs, &em, &g, index, mp.data, mp.len, line, 0);
        }
        index++;
      }
      line++;
      pos = end + 1;
    }
  } else {
    while (pos < in.len) {
      struct sl_codec_error cerr;
      size_t used;
      int src = sl_codec_skip(in.data + pos, in.len - pos, cfg->max_event_bytes,
                              &used, &cerr);
      if (src != 0) {
        char msg[256];
        snprintf(msg, sizeof(msg), "byte %zu: %s", pos,
                 src == SL_EAGAIN ? "truncated msgpack at the end of input"
                                  : cerr.msg);
        print_error(index, msg);
        break; /* a msgpack stream cannot be resynchronised */
      }
      decide_one(rs, &em, &g, index++, in.data + pos, used, 0, pos);
      pos += used;
    }
  }
  sl_buf_close(&in);
  sl_buf_close(&mp);
done:
  fflush(stdout);
  sl_rules_free(rs);
  sl_buf_close(&em.json);
  sl_config_free(cfg);
  return rc;
}

int sl_route_gate(const char *config, const char *path) {
  uint64_t *n = gate.counts, bad;
  int rc;
  gate.on = 1;
  rc = sl_route_main(config, path);
  gate.on = 0;
  if (rc != 0)
    return rc;
  bad = n[SL_RULES_FAILED] + n[SL_RULES_UNROUTED] + n[4];
  printf("%s: %llu events: %llu routed, %llu dropped, %llu unrouted, %llu "
         "failed, %llu invalid\n", path ? path : "stdin",
         (unsigned long long)(n[0] + n[1] + n[2] + n[3] + n[4]),
         (unsigned long long)n[SL_RULES_ROUTED],
         (unsigned long long)n[SL_RULES_DROPPED],
         (unsigned long long)n[SL_RULES_UNROUTED],
         (unsigned long long)n[SL_RULES_FAILED], (unsigned long long)n[4]);
  return bad ? 1 : 0;
}

char *sl_route_pid_path(const struct sl_config *cfg) {
  if (cfg->pid_file)
    return strdup(cfg->pid_file);
  return sl_state_path(cfg, "sluice.pid");
}

char *sl_route_status_path(const struct sl_config *cfg) {
  return sl_state_path(cfg, "sluice.status.json");
}

int sl_route_status(const char *config) {
  struct sl_buf errb, in;
  struct sl_config *cfg;
  char *path;
  FILE *f;
  int rc = 0;

  sl_buf_init(&errb);
  cfg = sl_config_load(config, sl_plugins, &errb);
  if (cfg == NULL) {
    fprintf(stderr, "%.*s", (int)errb.len, (const char *)errb.data);
    sl_buf_close(&errb);
    return 1;
  }
  sl_buf_close(&errb);
  path = sl_route_status_path(cfg);
  if (sl_state_holder(cfg) == 0) {
    /* a status file nobody holds the folder for is a dead engine's */
    fprintf(stderr, "sluice: no running engine: no process holds the lock "
                    "of %s\n", cfg->state_dir);
    sl_config_free(cfg);
    free(path);
    return 1;
  }
  sl_config_free(cfg);
  f = path ? fopen(path, "r") : NULL;
  if (f == NULL) {
    /* the engine runs: it has not written the file yet, or could not
     * (its log says why) */
    fprintf(stderr, "sluice: no status at %s: the running engine has not "
                    "written one (see its log)\n", path ? path : "(none)");
    free(path);
    return 1;
  }
  sl_buf_init(&in);
  if (read_all(f, &in) != 0)
    rc = 1;
  fclose(f);
  fwrite(in.data, 1, in.len, stdout);
  sl_buf_close(&in);
  free(path);
  return rc;
}
