/* test_config_diff.c - comparing two loaded configs for a whole-config
 * reload (config/diff.c): an input or output is the same only when every
 * resolved key is, routes compare by output names, and the settings only a
 * restart can change are named. */
#include <stdio.h>
#include <unistd.h>

#include "config.h"
#include "plugins.h"
#include "test.h"

static char dir[] = "/tmp/sluice-test-diff-XXXXXX";

static struct sl_config *load_pl(const char *text,
                                 const struct sl_config_plugin *const *pl) {
  static int made, n;
  char path[256];
  struct sl_buf err;
  struct sl_config *c;
  FILE *f;
  if (!made && mkdtemp(dir) == NULL)
    return NULL;
  made = 1;
  snprintf(path, sizeof(path), "%s/c%d.lua", dir, n++);
  f = fopen(path, "w");
  fputs(text, f);
  fclose(f);
  sl_buf_init(&err);
  c = sl_config_load(path, pl, &err);
  if (c == NULL)
    fprintf(stderr, "  %.*s", (int)err.len, (const char *)err.data);
  sl_buf_close(&err);
  return c;
}

static struct sl_config *load(const char *text) {
  return load_pl(text, sl_plugins);
}

#define IN "inputs = {{name='app', type='tcp', listen='127.0.0.1:7400'}},\n"

TEST(diff_same_file_is_the_same_everywhere) {
  const char *text = "return { " IN
                     " outputs = {{name='a', type='tcp', address='127.0.0.1:9', "
                     "queue={max_events=10}}, {name='b', type='null'}},\n"
                     " routes = {{topics='x.*', to={'a','b'}}} }\n";
  struct sl_config *x = load(text), *y = load(text);
  struct sl_buf out;
  int i;
  CHECK(x && y);
  sl_buf_init(&out);
  CHECK(sl_config_input_same(&x->inputs[0], &y->inputs[0]));
  for (i = 0; i < x->noutputs; i++)
    CHECK(sl_config_output_same(&x->outputs[i], &y->outputs[i]));
  CHECK(sl_config_routes_same(x, y));
  CHECK_EQ(sl_config_restart_diff(x, y, &out), 0);
  CHECK_EQ(out.len, 0);
  sl_buf_close(&out);
  sl_config_free(x);
  sl_config_free(y);
}

TEST(diff_any_changed_key_changes_an_output_or_input) {
  struct sl_config *x = load("return { " IN " outputs = {{name='a', type='tcp', "
                             "address='127.0.0.1:9', retry={max_ms=500}}} }\n");
  struct sl_config *y = load("return { " IN " outputs = {{name='a', type='tcp', "
                             "address='127.0.0.1:9', retry={max_ms=600}}} }\n");
  struct sl_config *z = load("return { inputs = {{name='app', type='tcp', "
                             "listen='127.0.0.1:7400', max_connections=5}},\n"
                             " outputs = {{name='a', type='tcp', "
                             "address='127.0.0.1:9', retry={max_ms=500}}} }\n");
  CHECK(x && y && z);
  CHECK(!sl_config_output_same(&x->outputs[0], &y->outputs[0]));
  CHECK(sl_config_output_same(&x->outputs[0], &z->outputs[0]));
  CHECK(!sl_config_input_same(&x->inputs[0], &z->inputs[0]));
  /* a default written out is no change */
  sl_config_free(y);
  y = load("return { inputs = {{name='app', type='tcp', listen='127.0.0.1:7400', "
           "max_connections=1024}},\n outputs = {{name='a', type='tcp', "
           "address='127.0.0.1:9', retry={max_ms=500, initial_ms=100}}} }\n");
  CHECK(y != NULL);
  CHECK(sl_config_input_same(&x->inputs[0], &y->inputs[0]));
  CHECK(sl_config_output_same(&x->outputs[0], &y->outputs[0]));
  /* a retired placeholder is never the same as anything */
  y->outputs[0].retired = 1;
  CHECK(!sl_config_output_same(&x->outputs[0], &y->outputs[0]));
  sl_config_free(x);
  sl_config_free(y);
  sl_config_free(z);
}

/* a plugin whose keys live in the values list, not in a shared field */
static const struct sl_config_key kv_keys[] = {
    {.name = "subject", .type = SL_KEY_STRING, .def = "events", .doc = "s"},
    {.name = "max_inflight", .type = SL_KEY_UINT, .def = "8", .min = 1,
     .max = 64, .doc = "n"},
    {0}};
static const struct sl_config_plugin kv = {SL_PLUGIN_OUTPUT, "kv", "test", kv_keys,
                                           NULL};

TEST(diff_compares_a_plugins_own_keys) {
  const struct sl_config_plugin *const list[] = {sl_plugins[0], &kv, NULL};
  struct sl_config *x = load_pl("return { " IN " outputs = {{name='k', type='kv'}} }\n", list);
  struct sl_config *y = load_pl("return { " IN " outputs = {{name='k', type='kv', "
                                "subject='events', max_inflight=8}} }\n", list);
  struct sl_config *z = load_pl("return { " IN " outputs = {{name='k', type='kv', "
                                "max_inflight=9}} }\n", list);
  CHECK(x && y && z);
  CHECK(sl_config_output_same(&x->outputs[0], &y->outputs[0]));
  CHECK(!sl_config_output_same(&x->outputs[0], &z->outputs[0]));
  sl_config_free(x);
  sl_config_free(y);
  sl_config_free(z);
}

TEST(diff_routes_compare_by_output_name_not_index) {
  struct sl_config *x = load("return { " IN " outputs = {{name='a', type='null'}, "
                             "{name='b', type='null'}},\n"
                             " routes = {{topics='t', to='b'}} }\n");
  struct sl_config *y = load("return { " IN " outputs = {{name='b', type='null'}, "
                             "{name='a', type='null'}},\n"
                             " routes = {{topics='t', to='b'}} }\n");
  struct sl_config *z = load("return { " IN " outputs = {{name='a', type='null'}, "
                             "{name='b', type='null'}},\n"
                             " routes = {{topics='t', to='a'}} }\n");
  struct sl_config *r = load("return { " IN " outputs = {{name='a', type='null'}, "
                             "{name='b', type='null'}},\n"
                             " routes = {{topics='t', to='b', rate_limit={events_per_second=5}}} }\n");
  struct sl_config *d = load("return { " IN " outputs = {{name='a', type='null'}, "
                             "{name='b', type='null'}},\n"
                             " routes = {{topics='t', to='b'}}, dead_letter='a' }\n");
  CHECK(x && y && z && r && d);
  CHECK(sl_config_routes_same(x, y)); /* b moved, still b */
  CHECK(!sl_config_routes_same(x, z));
  CHECK(!sl_config_routes_same(x, r));
  CHECK(!sl_config_routes_same(x, d)); /* the dead letter changed */
  sl_config_free(x);
  sl_config_free(y);
  sl_config_free(z);
  sl_config_free(r);
  sl_config_free(d);
}

TEST(diff_names_every_setting_that_needs_a_restart) {
  struct sl_config *x = load("return { " IN " outputs = {{name='a', type='null'}},\n"
                             " admin = {listen='127.0.0.1:9901'}, shutdown_timeout = 3 }\n");
  struct sl_config *y = load("return { " IN " outputs = {{name='a', type='null'}},\n"
                             " admin = {listen='127.0.0.1:9902'}, max_event_bytes='64KiB',\n"
                             " rules = {cpu_budget_ms = 20}, log_level = 'warn',\n"
                             " shutdown_timeout = 5 }\n");
  struct sl_buf out;
  CHECK(x && y);
  sl_buf_init(&out);
  CHECK_EQ(sl_config_restart_diff(x, y, &out), 4);
  sl_buf_putc(&out, '\0');
  /* shutdown_timeout applies at once: not named */
  CHECK_STR((const char *)out.data,
            "admin.listen, rules.cpu_budget_ms, max_event_bytes, log_level");
  sl_buf_close(&out);
  sl_config_free(x);
  sl_config_free(y);
}

TEST(diff_a_changed_workers_count_needs_a_restart) {
  struct sl_config *x = load("return { " IN " outputs = {{name='a', type='null'}}, workers = 2 }\n");
  struct sl_config *y = load("return { " IN " outputs = {{name='a', type='null'}}, workers = 4 }\n");
  struct sl_buf out;
  CHECK(x && y);
  sl_buf_init(&out);
  CHECK_EQ(sl_config_restart_diff(x, y, &out), 1);
  sl_buf_putc(&out, '\0');
  CHECK_STR((const char *)out.data, "workers (2 -> 4)");
  sl_buf_close(&out);
  sl_config_free(x);
  sl_config_free(y);
}

TEST(diff_an_exec_command_differing_past_its_first_word_is_a_change) {
  struct sl_config *x = load("return { " IN
                             " outputs = {{name='e', type='exec', "
                             "command={'sh', '-c', 'cat >> a'}}} }\n"),
                   *y = load("return { " IN
                             " outputs = {{name='e', type='exec', "
                             "command={'sh', '-c', 'cat >> b'}}} }\n"),
                   *z = load("return { " IN
                             " outputs = {{name='e', type='exec', "
                             "command={'sh', '-c', 'cat >> a'}}} }\n");
  CHECK(x && y && z);
  CHECK(!sl_config_output_same(&x->outputs[0], &y->outputs[0]));
  CHECK(sl_config_output_same(&x->outputs[0], &z->outputs[0]));
  sl_config_free(x);
  sl_config_free(y);
  sl_config_free(z);
}
