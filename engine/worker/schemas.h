/* schemas.h - the config's payload contracts enforced by a worker: which
 * contract and version an event falls under, the check of its payload,
 * what becomes of an event that does not fit (enforce: refused at the
 * HTTP input, dead-lettered at stream inputs; warn: counted, passed on),
 * outputs' schema = "..." and the metrics. */
#ifndef SL_WORKER_SCHEMAS_H
#define SL_WORKER_SCHEMAS_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "event.h"
#include "schema.h"

struct sl_worker;

enum sl_schema_result {
  SL_SCHEMA_NONE = 0, /* no contract covers the topic */
  SL_SCHEMA_VALID,
  SL_SCHEMA_INVALID,  /* enforce mode: refuse or dead-letter it */
  SL_SCHEMA_WARNED    /* warn mode: it does not fit, and passes on */
};

struct sl_schema_verdict {
  enum sl_schema_result result;
  const struct sl_schema_contract *contract;
  int version;                 /* index in contract->versions; -1: unknown */
  struct sl_schema_error e;    /* why it does not fit */
};

/* Set up the worker's contract state and its metrics. 0 or SL_ENOMEM. */
int sl_schemas_init(struct sl_worker *w);
void sl_schemas_free(struct sl_worker *w);

/* The verdict on an event's parts (headers: its raw map or NULL; payload:
 * its raw value, NULL or plen 0 for none) under w's live config. Counted
 * in the metrics when count is set. Returns v->result. */
enum sl_schema_result sl_schemas_check(struct sl_worker *w, struct sl_str topic,
                                       const uint8_t *headers, size_t hlen,
                                       const uint8_t *payload, size_t plen,
                                       int count, struct sl_schema_verdict *v);

/* The same verdict, on cfg alone (no worker, nothing counted: the dry
 * runs, `sluice route` and `sluice check --events`); *index, when given,
 * the contract's index in cfg->schemas. */
enum sl_schema_result sl_schemas_verdict(const struct sl_config *cfg,
                                         struct sl_str topic,
                                         const uint8_t *headers, size_t hlen,
                                         const uint8_t *payload, size_t plen,
                                         struct sl_schema_verdict *v,
                                         int *index);

/* The verdict on an event as an input submits it: counted, its version
 * stamped on ev, logged (rate-limited) when it does not fit. */
enum sl_schema_result sl_schemas_event(struct sl_worker *w,
                                       struct sl_event *ev,
                                       struct sl_schema_verdict *v);

/* "contract orders.* version 2: /sku: expected string" (the sluice-error
 * header, the log, the tap). */
void sl_schemas_describe(const struct sl_schema_verdict *v, char *out,
                         size_t n);

/* Does ev fit output i's schema = "..." (none: yes)? When not, why gets
 * the sluice-error text and the rejection is counted. 1 fits, 0 not. */
int sl_schemas_output_fits(struct sl_worker *w, int i,
                           const struct sl_event *ev, char *why, size_t n);

/* On cfg alone: 1 when ev does not fit output i's schema (why says so,
 * as sluice-error will), 0 when it fits or i has none. Nothing counted. */
int sl_schemas_misfit(const struct sl_config *cfg, int i,
                      const struct sl_event *ev, char *why, size_t n);

/* A copy of ev with sluice-error (and sluice-output when output) set, as
 * the dead letter gets it; NULL when out of memory. */
struct sl_event *sl_schemas_dead_letter_copy(struct sl_event *ev,
                                             const char *why,
                                             const char *output);

struct sl_rules_result;

/* Told of each misfit found by the filters below (the worker counts and
 * logs it; the dry runs pass NULL). */
typedef void (*sl_schemas_misfit_fn)(void *data, int output,
                                     const struct sl_event *ev,
                                     const char *why);

/* On cfg alone, the engine's and the dry runs' one filter: the targets of
 * r whose schema r->event does not fit leave r's targets (the dead letter
 * is never checked). Returns the last such output's name (why says why),
 * NULL when every target fits. */
const char *sl_schemas_keep_fitting(const struct sl_config *cfg,
                                    struct sl_rules_result *r, char *why,
                                    size_t n, sl_schemas_misfit_fn seen,
                                    void *data);

/* An event a rule emitted to *output (takes the reference): ev when it
 * fits (or the output has no schema, or is the dead letter); else its
 * dead-letter copy with sluice-error and sluice-output, *output set to
 * the dead letter (ev itself when there is no memory for the copy), or
 * NULL when there is none. */
struct sl_event *sl_schemas_emit_to(const struct sl_config *cfg, int *output,
                                    struct sl_event *ev, char *why, size_t n,
                                    sl_schemas_misfit_fn seen, void *data);

/* r becomes the refusal of ev (takes the reference): failed for why, its
 * copy with sluice-error (and sluice-output when output) the one target,
 * the dead letter (ev itself when there is no memory for the copy).
 * Returns 0; 1 when there is no dead letter: r then holds ev with no
 * target (dropped, counted). */
int sl_schemas_refuse(const struct sl_config *cfg, struct sl_rules_result *r,
                      struct sl_event *ev, const char *why,
                      const char *output);

/* In sl_worker_submit, before the rules (takes the reference to ev): 1
 * when the contract refused the event (enforce mode): r is the decision,
 * its dead-letter copy with sluice-error to the dead letter; 0 when the
 * rules go on with ev (r->schema then says why it did not fit in warn
 * mode, or is NULL). */
int sl_schemas_ingest(struct sl_worker *w, struct sl_event *ev,
                      struct sl_rules_result *r);

/* After the rules: the targets whose schema r->event does not fit leave
 * r's targets, and a copy with sluice-error goes to the dead letter
 * instead (r's decision becomes that when no target is left). */
void sl_schemas_outputs(struct sl_worker *w, struct sl_rules_result *r);

/* An event a rule emitted (sluice.emit) to *output (takes the reference):
 * ev when it fits the output's schema (or there is none); when not, its
 * copy with sluice-error and sluice-output, *output set to the dead
 * letter, or NULL when there is none (counted, dropped). */
struct sl_event *sl_schemas_emitted(struct sl_worker *w, int *output,
                                    struct sl_event *ev);

/* A whole-config reload may not change a loaded (contract, version) in a
 * way that breaks its readers: SL_EINVAL with err naming it, else 0. */
int sl_schemas_reload_check(const struct sl_config *cur,
                            const struct sl_config *next, char *err,
                            size_t errlen);

#endif
