/* test_config.c - config loading: defaults, and every rejection names the
 * file, the key path and what was expected. */
#include <stdio.h>
#include <unistd.h>

#include "config.h"
#include "plugins.h"
#include "test.h"

static char dir[] = "/tmp/sluice-test-config-XXXXXX";

static const char *write_conf(const char *text) {
  static char path[256];
  static int made; /* the template's random part may itself end in 'X' */
  FILE *f;
  if (!made && mkdtemp(dir) == NULL)
    return NULL;
  made = 1;
  snprintf(path, sizeof(path), "%s/c.lua", dir);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  return path;
}

static struct sl_config *load(const char *text, struct sl_buf *err) {
  sl_buf_reset(err);
  return sl_config_load(write_conf(text), sl_plugins, err);
}

static int has(struct sl_buf *err, const char *needle) {
  sl_buf_putc(err, '\0');
  err->len--;
  return strstr((const char *)err->data, needle) != NULL;
}

TEST(config_good_file_has_defaults_and_resolved_routes) {
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  c = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null'}, {name='b', type='stdout'}},\n"
           " routes = {{topics='orders.*', to={'b','a'}}, {topics={'x','y'}, to='a'}} }\n",
           &err);
  CHECK(c != NULL);
  CHECK_EQ(c->ninputs, 1);
  CHECK_EQ(c->noutputs, 3); /* + the implicit dead letter */
  CHECK_STR(c->outputs[2].name, "dead_letter");
  CHECK_EQ(c->dead_letter, 2);
  CHECK_EQ(c->router.nroutes, 2);
  CHECK_EQ(c->router.routes[0].nto, 2);
  CHECK_EQ(c->router.routes[0].to[0], 1);
  CHECK_EQ(c->router.routes[0].to[1], 0);
  CHECK_EQ(c->router.routes[1].ntopics, 2);
  CHECK_EQ(c->outputs[0].queue.max_events, 100000);
  CHECK_EQ(c->outputs[0].queue.when_full, SL_QUEUE_BLOCK);
  CHECK_EQ(c->max_event_bytes, 1 << 20);
  CHECK_EQ(c->shutdown_timeout_ms, 10000);
  CHECK_EQ(c->rules.cpu_budget_ms, 10);
  CHECK_EQ(c->rules.memory_mb, 64);
  CHECK_EQ(c->rules.jit, 0);
  sl_config_free(c);
  sl_buf_close(&err);
}

TEST(config_sizes_accept_units) {
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  c = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null', queue={max_bytes='2MiB', "
           "max_events=10, when_full='drop_oldest'}}},\n"
           " max_event_bytes = '64KiB' }\n",
           &err);
  CHECK(c != NULL);
  CHECK_EQ(c->outputs[0].queue.max_bytes, 2 << 20);
  CHECK_EQ(c->outputs[0].queue.when_full, SL_QUEUE_DROP_OLDEST);
  CHECK_EQ(c->max_event_bytes, 65536);
  sl_config_free(c);
  sl_buf_close(&err);
}

TEST(config_state_dir_holds_the_default_engine_files) {
  struct sl_buf err;
  struct sl_config *c;
  char want[512];
  sl_buf_init(&err);
  c = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null', buffer={type='disk'}},\n"
           "            {name='b', type='null', buffer={type='disk', path='mine'}}} }\n",
           &err);
  CHECK(c != NULL);
  snprintf(want, sizeof(want), "%s/var", c->dir); /* the default, as before */
  CHECK_STR(c->state_dir, want);
  CHECK(c->pid_file == NULL);
  sl_config_free(c);
  c = load("return { state_dir = 'run/st/', admin = { ready_requires_outputs = true },\n"
           " inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='null', buffer={type='disk'}},\n"
           "            {name='b', type='null', buffer={type='disk', path='mine'}}} }\n",
           &err);
  CHECK(c != NULL);
  snprintf(want, sizeof(want), "%s/run/st", c->dir); /* relative: the config's */
  CHECK_STR(c->state_dir, want);
  snprintf(want, sizeof(want), "%s/run/st/buffer/a", c->dir);
  CHECK_STR(c->outputs[0].buffer.path, want);
  snprintf(want, sizeof(want), "%s/mine", c->dir); /* a path you set stays */
  CHECK_STR(c->outputs[1].buffer.path, want);
  snprintf(want, sizeof(want), "%s/run/st/dead-letter.ndjson", c->dir);
  CHECK_STR(c->outputs[c->dead_letter].path, want);
  CHECK_EQ(c->admin.ready_requires_outputs, 1);
  sl_config_free(c);
  CHECK(load("return { state_dir = 7, inputs = {{name='app', type='tcp', "
             "listen='127.0.0.1:7400'}}, admin = { ready_requires_outputs = 'yes' } }\n",
             &err) == NULL);
  CHECK(has(&err, "c.lua: state_dir: expected string, got number"));
  CHECK(has(&err, "c.lua: admin.ready_requires_outputs: expected boolean, got string"));
  sl_buf_close(&err);
}

TEST(config_rejects_with_key_paths) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400', bogus=1}},\n"
             " outputs = {{name='a', type='file', path=3}, {name='a', type='null'},\n"
             "            {name='c', type='tcp', address='nohost'}},\n"
             " routes = {{topics='x', to='missing'}},\n"
             " wat = true }\n",
             &err) == NULL);
  CHECK(has(&err, "c.lua: inputs[1]: unknown key 'bogus'"));
  CHECK(has(&err, "c.lua: outputs[1].path: expected string, got number"));
  CHECK(has(&err, "c.lua: outputs[2].name: duplicate output name \"a\""));
  CHECK(has(&err, "c.lua: outputs[3].address: expected \"host:port\""));
  CHECK(has(&err, "c.lua: routes[1].to: no output named \"missing\""));
  CHECK(has(&err, "c.lua: : unknown key 'wat'") || has(&err, "unknown key 'wat'"));
  sl_buf_close(&err);
}

#define WCONF(extra)                                                        \
  "return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n" \
  " outputs = {{name='a', type='null'}}, " extra " }\n"

TEST(config_workers_defaults_to_one_and_takes_1_to_64_or_auto) {
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  c = load(WCONF(""), &err);
  CHECK(c != NULL);
  CHECK_EQ(c->workers, 1);
  sl_config_free(c);
  c = load(WCONF("workers = 64"), &err);
  CHECK(c != NULL);
  CHECK_EQ(c->workers, 64);
  sl_config_free(c);
  c = load(WCONF("workers = 'auto'"), &err);
  CHECK(c != NULL);
  CHECK(c->workers >= 1 && c->workers <= 64);
  sl_config_free(c);
  /* rules.jit with workers: each worker's states compiled, one interrupt
   * (tests/integration/test_workers_jit.py) */
  c = load(WCONF("workers = 2, rules = {dir='.', jit=true}"), &err);
  CHECK(c != NULL);
  CHECK_EQ(c->workers, 2);
  CHECK_EQ(c->rules.jit, 1);
  sl_config_free(c);
  sl_buf_close(&err);
}

TEST(config_workers_rejects_out_of_range_and_unsafe_combinations) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load(WCONF("workers = 0"), &err) == NULL);
  CHECK(has(&err, "workers: expected an integer from 1 to 64 or \"auto\", got 0"));
  CHECK(load(WCONF("workers = 65"), &err) == NULL);
  CHECK(has(&err, "got 65"));
  CHECK(load(WCONF("workers = 1.5"), &err) == NULL);
  CHECK(has(&err, "got 1.5"));
  CHECK(load(WCONF("workers = 'x'"), &err) == NULL);
  CHECK(has(&err, "workers: expected an integer from 1 to 64 or \"auto\", got x"));
  CHECK(load(WCONF("workers = true"), &err) == NULL);
  CHECK(has(&err, "got boolean"));
  CHECK(load(WCONF("workers = 2, rules = {dir='.', persist=true}"), &err) == NULL);
  CHECK(has(&err, "workers: rules.persist keeps one state file per rule"));
  sl_buf_close(&err);
}

TEST(config_rejects_unwritable_path_and_bad_policy) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
             " outputs = {{name='a', type='file', path='/etc/passwd/x.ndjson'},\n"
             "            {name='b', type='null', queue={when_full='explode'}}} }\n",
             &err) == NULL);
  CHECK(has(&err, "outputs[1].path: cannot write /etc/passwd/x.ndjson: '/etc/passwd' is not a directory"));
  CHECK(has(&err, "outputs[2].queue.when_full: expected \"block\""));
  sl_buf_close(&err);
}

TEST(config_reports_lua_errors_with_line) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load("return {\n inputs = \n", &err) == NULL);
  CHECK(has(&err, "c.lua:"));
  sl_buf_reset(&err);
  CHECK(load("return 42\n", &err) == NULL);
  CHECK(has(&err, "must return a table, it returned number"));
  sl_buf_close(&err);
}

TEST(config_has_no_io_or_os) {
  struct sl_buf err;
  sl_buf_init(&err);
  CHECK(load("io.open('/etc/passwd')\nreturn {}\n", &err) == NULL);
  CHECK(has(&err, "io"));
  sl_buf_reset(&err);
  CHECK(load("os.execute('true')\nreturn {}\n", &err) == NULL);
  CHECK(has(&err, "os"));
  sl_buf_reset(&err);
  CHECK(load("return dofile('/etc/passwd')\n", &err) == NULL);
  sl_buf_close(&err);
}

TEST(config_hostport_parsing) {
  char host[64];
  int port;
  CHECK_EQ(sl_config_parse_hostport("127.0.0.1:80", host, sizeof(host), &port), 0);
  CHECK_STR(host, "127.0.0.1");
  CHECK_EQ(port, 80);
  CHECK_EQ(sl_config_parse_hostport("[::1]:9090", host, sizeof(host), &port), 0);
  CHECK_STR(host, "::1");
  CHECK_EQ(sl_config_parse_hostport("localhost:1", host, sizeof(host), &port), 0);
  CHECK_STR(host, "127.0.0.1");
  CHECK(sl_config_parse_hostport("127.0.0.1", host, sizeof(host), &port) != 0);
  CHECK(sl_config_parse_hostport("127.0.0.1:0", host, sizeof(host), &port) != 0);
  CHECK(sl_config_parse_hostport("127.0.0.1:70000", host, sizeof(host), &port) != 0);
  CHECK(sl_config_parse_hostport("example.com:80", host, sizeof(host), &port) != 0);
}

TEST(config_delivery_keys_defaults_and_values) {
  struct sl_buf err;
  struct sl_config *c;
  const struct sl_output_config *a, *b, *f;
  sl_buf_init(&err);
  c = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " outputs = {{name='a', type='tcp', address='127.0.0.1:9'},\n"
           "  {name='b', type='tcp', address='127.0.0.1:9',\n"
           "   retry={initial_ms=10, max_ms=200, max_attempts=4, max_elapsed_ms=900,\n"
           "          timeout_ms=0},\n"
           "   rate_limit={events_per_second=50}, dedup={window_ms=1000}},\n"
           "  {name='f', type='null', breaker=false,\n"
           "   rate_limit={events_per_second=10, burst=2}}} }\n",
           &err);
  CHECK(c != NULL);
  a = &c->outputs[0];
  b = &c->outputs[1];
  f = &c->outputs[2];
  CHECK_EQ(a->retry.max_attempts, 0);
  CHECK_EQ(a->retry.max_elapsed_ms, 0);
  CHECK_EQ(a->retry.timeout_ms, 30000);
  CHECK_EQ(a->breaker.failures, 5);
  CHECK_EQ(a->breaker.open_ms, 5000);
  CHECK_EQ(a->rate_limit.events_per_second, 0);
  CHECK_EQ(a->dedup.window_ms, 0);
  CHECK_EQ(b->retry.max_attempts, 4);
  CHECK_EQ(b->retry.max_elapsed_ms, 900);
  CHECK_EQ(b->retry.timeout_ms, 0);
  CHECK_EQ(b->breaker.open_ms, 200); /* never longer than retry.max_ms */
  CHECK_EQ(b->rate_limit.burst, 50);  /* one second's worth */
  CHECK_EQ(b->dedup.max_ids, 100000);
  CHECK_EQ(f->breaker.failures, 0);
  CHECK_EQ(f->rate_limit.burst, 2);
  CHECK_EQ(c->outputs[c->dead_letter].breaker.failures, 5);
  sl_config_free(c);
  sl_buf_close(&err);
}

/* A plugin the engine does not have, declared the way a new one would be:
 * a key table without fields in the shared structs. The checker needs
 * nothing else to check, default and store its keys. */
static const char *const modes[] = {"at_most_once", "at_least_once", NULL};
static const struct sl_config_key nats_keys[] = {
    {.name = "servers", .type = SL_KEY_ADDRESS, .doc = "a server",
     .flags = SL_KEY_REQUIRED},
    {.name = "subject", .type = SL_KEY_STRING, .def = "events",
     .doc = "where to publish"},
    {.name = "max_inflight", .type = SL_KEY_UINT, .def = "8", .min = 1,
     .max = 64, .doc = "unacked publishes"},
    {.name = "max_payload", .type = SL_KEY_BYTES, .def = "1MiB", .min = 1,
     .max = 64u << 20, .doc = "largest message"},
    {.name = "echo", .type = SL_KEY_BOOL, .def = "false", .doc = "echo"},
    {.name = "mode", .type = SL_KEY_ENUM, .def = "at_least_once",
     .choices = modes, .doc = "delivery"},
    {.name = "creds", .type = SL_KEY_PATH, .doc = "credentials file"},
    {0}};
static const struct sl_config_plugin nats = {SL_PLUGIN_OUTPUT, "nats",
                                             "publishes to NATS", nats_keys,
                                             NULL};

static struct sl_config *load_with(const char *text,
                                   const struct sl_config_plugin *const *pl,
                                   struct sl_buf *err) {
  sl_buf_reset(err);
  return sl_config_load(write_conf(text), pl, err);
}

TEST(config_plugin_table_alone_checks_defaults_and_stores_a_new_plugins_keys) {
  const struct sl_config_plugin *const list[] = {sl_plugins[0], &nats, NULL};
  const struct sl_output_config *o;
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  c = load_with("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
                " outputs = {{name='n', type='nats', servers='127.0.0.1:4222',\n"
                "  max_inflight=16, echo=true, creds='nats.creds'},\n"
                "  {name='m', type='nats', servers='127.0.0.1:4223', mode='at_most_once',\n"
                "   max_payload='2MiB', subject='s'}},\n"
                " dead_letter = 'm' }\n",
                list, &err);
  CHECK(c != NULL);
  o = &c->outputs[0];
  CHECK_STR(sl_config_value_str(o->values, o->nvalues, "servers"), "127.0.0.1:4222");
  CHECK_STR(sl_config_value_str(o->values, o->nvalues, "subject"), "events");
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "max_inflight"), 16);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "max_payload"), 1 << 20);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "echo"), 1);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "mode"), 1);
  CHECK(sl_config_value_str(o->values, o->nvalues, "creds")[0] == '/');
  CHECK(sl_config_value_str(o->values, o->nvalues, "nosuch") == NULL);
  o = &c->outputs[1];
  CHECK_STR(sl_config_value_str(o->values, o->nvalues, "subject"), "s");
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "max_inflight"), 8);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "max_payload"), 2 << 20);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "echo"), 0);
  CHECK_EQ(sl_config_value_num(o->values, o->nvalues, "mode"), 0);
  CHECK(sl_config_value_str(o->values, o->nvalues, "creds") == NULL);
  sl_config_free(c);

  CHECK(load_with("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
                  " outputs = {{name='n', type='nats', max_inflight=65, mode='x',\n"
                  "  subjct='s', echo='yes'},\n"
                  "  {name='f', type='file', path='x'}} }\n",
                  list, &err) == NULL);
  CHECK(has(&err, "c.lua: outputs[1]: unknown key 'subjct' (expected one of: name, "
                  "type, servers, subject, max_inflight, max_payload, echo, mode, "
                  "creds, queue,"));
  CHECK(has(&err, "for type nats)\n"));
  CHECK(has(&err, "c.lua: outputs[1].servers: expected string, got nil (a nats "
                  "output needs servers)"));
  CHECK(has(&err, "c.lua: outputs[1].max_inflight: expected a whole number from 1 to 64, got 65"));
  CHECK(has(&err, "c.lua: outputs[1].mode: expected \"at_most_once\" or \"at_least_once\", got \"x\""));
  CHECK(has(&err, "c.lua: outputs[1].echo: expected boolean, got string"));
  /* file is not in this registry: the checker knows only what it is given */
  CHECK(has(&err, "c.lua: outputs[2].type: unknown output type \"file\" (expected nats)"));
  sl_buf_close(&err);
}

/* ---- environment ---------------------------------------------------------- */

/* The expansion of s, or "ERR:" and the reason. */
static const char *expand(const char *s) {
  static char res[512];
  struct sl_buf out;
  char why[256];
  int rc;
  sl_buf_init(&out);
  rc = sl_config_expand(s, strlen(s), &out, why, sizeof(why));
  if (rc != 0)
    snprintf(res, sizeof(res), "ERR:%s", why);
  else
    snprintf(res, sizeof(res), "%.*s", (int)out.len, (const char *)out.data);
  sl_buf_close(&out);
  return res;
}

TEST(config_expand_puts_in_variables_defaults_and_dollars) {
  setenv("SL_T_HOST", "central.svc", 1);
  setenv("SL_T_EMPTY", "", 1);
  unsetenv("SL_T_UNSET");
  CHECK_STR(expand("${SL_T_HOST}:7400"), "central.svc:7400");
  CHECK_STR(expand("a${SL_T_HOST}b${SL_T_HOST}"), "acentral.svcbcentral.svc");
  CHECK_STR(expand("${SL_T_UNSET:-localhost}:1"), "localhost:1");
  CHECK_STR(expand("${SL_T_EMPTY:-fallback}"), "fallback"); /* as the shell */
  CHECK_STR(expand("${SL_T_EMPTY}x"), "x");
  CHECK_STR(expand("${SL_T_HOST:-unused}"), "central.svc");
  CHECK_STR(expand("${SL_T_UNSET:-}"), "");
  /* defaults are expanded; one not taken may name unset variables */
  CHECK_STR(expand("${SL_T_UNSET:-${SL_T_HOST}}"), "central.svc");
  CHECK_STR(expand("${SL_T_HOST:-${SL_T_UNSET}}"), "central.svc");
  /* braces in a default pair up; $} is a lone one */
  CHECK_STR(expand("${SL_T_UNSET:-{\"a\":{\"b\":1}}}"), "{\"a\":{\"b\":1}}");
  CHECK_STR(expand("${SL_T_UNSET:-x$}y}z"), "x}yz");
  CHECK_STR(expand("$${SL_T_HOST} costs $$5"), "${SL_T_HOST} costs $5");
  CHECK_STR(expand("^orders$ and $x"), "^orders$ and $x"); /* lone $ stays */
  CHECK_STR(expand("end$"), "end$");
  /* a value is put in as it is, never expanded again */
  setenv("SL_T_DOLLAR", "${SL_T_HOST}$$", 1);
  CHECK_STR(expand("${SL_T_DOLLAR}"), "${SL_T_HOST}$$");
}

TEST(config_expand_refuses_bad_references_naming_them) {
  unsetenv("SL_T_UNSET");
  CHECK_STR(expand("${SL_T_UNSET}"),
            "ERR:environment variable SL_T_UNSET is not set "
            "(${SL_T_UNSET:-default} gives a default)");
  CHECK(strncmp(expand("x${SL_T_HOST"), "ERR:unterminated \"${\" at byte 2",
                31) == 0);
  CHECK(strncmp(expand("${"), "ERR:unterminated", 16) == 0);
  CHECK(strncmp(expand("${SL_T_UNSET:-abc"), "ERR:unterminated \"${\": the default",
                34) == 0);
  CHECK(strncmp(expand("${SL_T_UNSET:-{x}"), "ERR:unterminated", 16) == 0);
  CHECK(strncmp(expand("${}"), "ERR:bad variable reference at byte 1", 36) == 0);
  CHECK(strncmp(expand("${:-x}"), "ERR:bad variable reference", 26) == 0);
  CHECK(strncmp(expand("${1X}"), "ERR:bad variable reference", 26) == 0);
  CHECK(strncmp(expand("${A B}"), "ERR:bad variable reference", 26) == 0);
  CHECK(strncmp(expand("${A:x}"), "ERR:bad variable reference", 26) == 0);
  CHECK(strncmp(expand("${A:-${B:-${C:-${D:-${E:-${F:-${G:-${H:-${I:-x}}}}}}}}}"),
                "ERR:defaults nested deeper than 8", 33) == 0);
}

TEST(config_expand_bounds_the_result) {
  size_t big = SL_CONFIG_MAX_EXPANDED / 2 + 1;
  char *v = malloc(big + 1);
  struct sl_buf out;
  char why[256];
  memset(v, 'v', big);
  v[big] = '\0';
  setenv("SL_T_BIG", v, 1);
  sl_buf_init(&out);
  CHECK_EQ(sl_config_expand("${SL_T_BIG}", 11, &out, why, sizeof(why)), 0);
  CHECK_EQ(out.len, big);
  CHECK_EQ(sl_config_expand("${SL_T_BIG}${SL_T_BIG}", 22, &out, why,
                            sizeof(why)), SL_E2BIG);
  CHECK(strstr(why, "longer than 65536 bytes") != NULL);
  /* a default not taken costs nothing */
  CHECK_EQ(sl_config_expand("${SL_T_BIG:-${SL_T_BIG}${SL_T_BIG}}", 35, &out,
                            why, sizeof(why)), 0);
  CHECK_EQ(out.len, big);
  sl_buf_close(&out);
  unsetenv("SL_T_BIG");
  free(v);
}

TEST(config_env_reaches_nested_strings_and_errors_name_the_key_path) {
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  setenv("SL_T_PORT", "7401", 1);
  setenv("SL_T_TOPIC", "orders", 1);
  unsetenv("SL_T_UNSET");
  c = load("return { inputs = {{name='app', type='tcp', "
           "listen='127.0.0.1:${SL_T_PORT}'}},\n"
           " outputs = {{name='a', type='null', queue={max_bytes='${SL_T_UNSET:-2MiB}'}}},\n"
           " routes = {{topics={'x', '${SL_T_TOPIC}.*'}, to='a'}} }\n",
           &err);
  CHECK(c != NULL);
  if (c) {
    CHECK_STR(c->inputs[0].listen, "127.0.0.1:7401");
    CHECK_EQ(c->outputs[0].queue.max_bytes, 2 << 20);
  }
  sl_config_free(c);
  CHECK(load("local shared = { max_bytes = '${SL_T_UNSET}' }\n"
             "return { inputs = {{name='app', type='tcp', "
             "listen='${SL_T_UNSET}:1'}},\n"
             " outputs = {{name='a', type='null', queue=shared}},\n"
             " routes = {{topics={'x', 'y${SL_T_UNSET}'}, to='a'}} }\n",
             &err) == NULL);
  CHECK(has(&err, "c.lua: inputs[1].listen: environment variable SL_T_UNSET "
                  "is not set"));
  CHECK(has(&err, "c.lua: outputs[1].queue.max_bytes: environment variable "
                  "SL_T_UNSET is not set"));
  CHECK(has(&err, "c.lua: routes[1].topics[2]: environment variable"));
  sl_buf_close(&err);
}

TEST(config_rules_jit_takes_a_boolean) {
  struct sl_buf err;
  struct sl_config *c;
  sl_buf_init(&err);
  c = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
           " rules = { jit = true } }\n", &err);
  CHECK(c != NULL);
  CHECK_EQ(c->rules.jit, 1);
  sl_config_free(c);
  CHECK(load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"
             " rules = { jit = 'on' } }\n", &err) == NULL);
  CHECK(has(&err, "c.lua: rules.jit: expected boolean, got string"));
  sl_buf_close(&err);
}
