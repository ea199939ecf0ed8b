/* main.c - the sluice command line: run, check, route, test, reload,
 * status. Parses arguments, loads the config and hands over to a worker;
 * owns nothing past the call it makes. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "config.h"
#include "dlq.h"
#include "lint.h"
#include "log.h"
#include "notify.h"
#include "plugins.h"
#include "route.h"
#include "rules.h"
#include "state.h"
#include "tap.h"
#include "worker.h"

static const char usage[] =
    "usage: sluice <command> [options]\n"
    "\n"
    "commands:\n"
    "  run     [-c FILE]   run the engine (default config: " SL_CONFIG_DEFAULT_PATH ")\n"
    "  check   [-c FILE] [--strict] [--events FILE]\n"
    "                      check a config, its rules and schemas (versions of a\n"
    "                      contract compared); exit 0 when valid, 1 with\n"
    "                      the problems otherwise; warns of output names in rule\n"
    "                      literals that name no output (--strict: exit 1);\n"
    "                      --events: dry-run them, exit 1 on any failed,\n"
    "                      unrouted or invalid event (a pre-deploy gate)\n"
    "  route   [-c FILE] [--events FILE]\n"
    "                      dry run: read events (NDJSON or msgpack; stdin by\n"
    "                      default), run the rules offline and print each decision\n"
    "  test    [DIR...]    run the busted specs (*_spec.lua) of DIR (default rules/)\n"
    "                      in the engine's own sandbox\n"
    "  reload  [-c FILE]   ask the running engine to reload its config and rules\n"
    "                      (SIGHUP to the pid in pid_file, checked against the\n"
    "                      holder of the lock on the config's state_dir)\n"
    "  status  [-c FILE]   print the running engine's rule status (JSON, from\n"
    "                      the config's state_dir)\n"
    "  tap     [-c FILE] [--topics GLOB] [--rule GLOB] [--output NAME]\n"
    "          [--outcome LIST] [--sample SHARE] [--limit N] [--json]\n"
    "          [--timeout SECONDS]\n"
    "                      live events of the running engine with their\n"
    "                      decision (rule, outputs, reason), via the admin API\n"
    "  top     [-c FILE] [--once] [--timeout SECONDS]\n"
    "                      a live view of the running engine, each second:\n"
    "                      events/s per input, rule and output, p99, queues\n"
    "  plugins             list the input and output types with their keys\n"
    "                      (type, default, what it does)\n"
    "  dlq replay FILE|-c FILE --to ADDRESS [--timeout SECONDS] [--token T]\n"
    "                      send the events of a dead-letter file (without the\n"
    "                      headers sluice added when it gave up, ids kept) to\n"
    "                      a tcp/unix input and wait for its acks, or POST\n"
    "                      them to an http input (--to http://HOST:PORT[/PATH])\n"
    "\n"
    "options:\n"
    "  -c, --config FILE   the config file\n"
    "  --log-level LEVEL   debug, info, warn or error (overrides the config)\n"
    "  --events FILE       route: the events to read\n"
    "  -h, --help          this text\n"
    "  --version           print the version\n";

/* The Lua runtime (scripts/) and the sandbox module (sluice_core.so),
 * found relative to the binary's own path (/proc/self/exe), so the source
 * tree, `make install` and an install under DESTDIR or a moved prefix all
 * work without a compiled-in prefix. */
struct runtime {
  char scripts[PATH_MAX]; /* holds sluice/testing.lua */
  char core[PATH_MAX];    /* holds sluice_core.so */
};

/* Fill rt from the first layout that has both parts: the source tree
 * (build/sluice beside build/sluice_core.so, scripts/ one up) or an
 * install (PREFIX/bin/sluice, PREFIX/share/sluice/scripts,
 * PREFIX/lib/sluice/sluice_core.so). Returns 0 or SL_ENOENT. */
static int find_runtime(struct runtime *rt) {
  static const char *const layouts[][2] = {
      {"%s/../scripts", "%s"},
      {"%s/../share/sluice/scripts", "%s/../lib/sluice"}};
  char exe[PATH_MAX], probe[PATH_MAX + 64], *dir, *real_s, *real_c;
  struct stat st;
  ssize_t n;
  size_t i;

  n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    return SL_ENOENT;
  exe[n] = '\0';
  dir = dirname(exe);
  for (i = 0; i < SL_ARRAY_SIZE(layouts); i++) {
    snprintf(rt->scripts, sizeof(rt->scripts), layouts[i][0], dir);
    snprintf(rt->core, sizeof(rt->core), layouts[i][1], dir);
    snprintf(probe, sizeof(probe), "%s/sluice/testing.lua", rt->scripts);
    if (stat(probe, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    snprintf(probe, sizeof(probe), "%s/sluice_core.so", rt->core);
    if (stat(probe, &st) != 0 || !S_ISREG(st.st_mode))
      continue;
    real_s = realpath(rt->scripts, NULL);
    real_c = realpath(rt->core, NULL);
    if (real_s && real_c) {
      snprintf(rt->scripts, sizeof(rt->scripts), "%s", real_s);
      snprintf(rt->core, sizeof(rt->core), "%s", real_c);
    }
    free(real_s);
    free(real_c);
    return 0;
  }
  return SL_ENOENT;
}

/* The engine's rule sandbox reads SLUICE_SCRIPTS; an explicit one wins. */
static void find_scripts(void) {
  struct runtime rt;
  if (getenv("SLUICE_SCRIPTS") == NULL && find_runtime(&rt) == 0)
    setenv("SLUICE_SCRIPTS", rt.scripts, 0);
}

/* Load the config; on error print every problem: as text for the
 * commands a person runs, as JSON log lines for `run` (its stderr is the
 * engine's log). */
static struct sl_config *load(const char *path, int json) {
  struct sl_buf err;
  struct sl_config *cfg;
  sl_buf_init(&err);
  cfg = sl_config_load(path, sl_plugins, &err);
  if (cfg == NULL && json) {
    char *line = (char *)err.data, *nl;
    sl_buf_putc(&err, '\0');
    line = (char *)err.data;
    for (; line && *line; line = nl ? nl + 1 : NULL) {
      nl = strchr(line, '\n');
      if (nl)
        *nl = '\0';
      if (*line)
        sl_log(SL_LOG_ERROR, "config problem", SL_S("config", path),
               SL_S("problem", line), SL_END);
    }
    sl_log(SL_LOG_ERROR, "config rejected; not starting", SL_S("config", path),
           SL_END);
  } else if (cfg == NULL) {
    fprintf(stderr, "%.*s", (int)err.len, (const char *)err.data);
    fprintf(stderr, "sluice: %s: config rejected\n", path);
  }
  sl_buf_close(&err);
  return cfg;
}

static int write_pid_file(const char *path) {
  char buf[32], dir[PATH_MAX];
  int fd, n;
  snprintf(dir, sizeof(dir), "%s", path);
  mkdir(dirname(dir), 0755);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0)
    return -errno;
  n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
  if (write(fd, buf, (size_t)n) != n) {
    close(fd);
    return -EIO;
  }
  close(fd);
  return 0;
}

/* Remove the pid file only while it still names this process: a file
 * another instance wrote (an explicit pid_file two configs share) stays. */
static void remove_pid_file(const char *path) {
  char buf[32];
  FILE *f = fopen(path, "r");
  int ours = f && fgets(buf, sizeof(buf), f) && strtol(buf, NULL, 10) == getpid();
  if (f)
    fclose(f);
  if (ours)
    unlink(path);
}

/* Own the state folder before anything is written in it. Returns the
 * lock's fd, or -1 after logging why not. */
static int lock_state(const struct sl_config *cfg, const char *path) {
  char why[512];
  long holder;
  int fd = sl_state_lock(cfg, &holder, why, sizeof(why));
  if (fd == SL_EAGAIN)
    sl_log(SL_LOG_ERROR,
           "another sluice holds the state folder; not starting (give "
           "each instance its own state_dir)",
           SL_S("config", path), SL_S("state_dir", cfg->state_dir),
           SL_I("holder_pid", holder), SL_END);
  else if (fd < 0)
    sl_log(SL_LOG_ERROR, "cannot use the state folder; not starting",
           SL_S("config", path), SL_S("state_dir", cfg->state_dir),
           SL_S("error", why), SL_END);
  return fd < 0 ? -1 : fd;
}

/* The admin server sits above the worker: made here and attached to it. */
static int start_admin(struct sl_worker *w, char *err, size_t errlen) {
  struct sl_admin *a = sl_admin_new(w);
  if (a == NULL) {
    snprintf(err, errlen, "admin: out of memory");
    return SL_ENOMEM;
  }
  sl_worker_attach(w, a, sl_admin_stop, sl_admin_free);
  return sl_admin_start(a, err, errlen);
}

static int cmd_run(const char *path, int level) {
  struct sl_worker w;
  struct sl_config *cfg;
  char err[1024];
  char *pid_file;
  int rc, lock_fd;

  cfg = load(path, 1);
  if (cfg == NULL)
    return 1;
  if (level < 0 && cfg->log_level >= 0)
    sl_log_set_level((enum sl_log_level)cfg->log_level);
  lock_fd = lock_state(cfg, path);
  if (lock_fd < 0) {
    sl_config_free(cfg);
    return 1;
  }
  signal(SIGPIPE, SIG_IGN);
  if (sl_worker_init(&w, cfg, err, sizeof(err)) != 0) {
    sl_log(SL_LOG_ERROR, "cannot start", SL_S("config", path),
           SL_S("error", err), SL_END);
    sl_config_free(cfg);
    close(lock_fd);
    return 1;
  }
  if (cfg->admin.listen && start_admin(&w, err, sizeof(err)) != 0) {
    sl_log(SL_LOG_ERROR, "cannot start", SL_S("config", path),
           SL_S("error", err), SL_END);
    sl_worker_abort(&w);
    sl_config_free(cfg);
    close(lock_fd);
    return 1;
  }
  pid_file = sl_route_pid_path(cfg);
  if (pid_file && write_pid_file(pid_file) != 0)
    sl_log(SL_LOG_WARN, "cannot write the pid file; `sluice reload` will not "
                        "find this process",
           SL_S("pid_file", pid_file), SL_END);
  {
    char *status = sl_route_status_path(cfg);
    if (status)
      sl_rules_set_status_file(w.rules, status);
    free(status);
  }
  if (cfg->rules.persist && cfg->rules.dir) {
    /* before the loop runs: restored state is there for the first event */
    char *dir = sl_state_path(cfg, "rule-state");
    int prc = dir ? sl_rules_persist(w.rules, dir, cfg->rules.persist_interval_s)
                  : SL_ENOMEM;
    if (prc != 0)
      sl_log(SL_LOG_WARN, "cannot use the rule state folder; rules.persist is "
                          "off", SL_S("dir", dir), SL_S("error", strerror(-prc)),
             SL_END);
    free(dir);
  }
  if (cfg->workers_auto)
    sl_log(SL_LOG_INFO, "workers = \"auto\": the CPUs this process may use",
           SL_I("workers", cfg->workers), SL_I("cpus_online", cfg->cpus.online),
           SL_I("cpus_allowed", cfg->cpus.allowed),
           SL_D("cpu_quota", cfg->cpus.quota), SL_END);
  sl_log(SL_LOG_INFO, "sluice started", SL_S("version", SL_VERSION),
         SL_S("config", path), SL_I("pid", getpid()),
         SL_S("state_dir", cfg->state_dir), SL_I("inputs", cfg->ninputs),
         SL_I("outputs", cfg->noutputs), SL_END);
  {
    /* Type=notify: every listener is bound and the rules are loaded */
    char ready[64];
    snprintf(ready, sizeof(ready), "READY=1\nMAINPID=%ld", (long)getpid());
    int nrc = sl_notify_send(ready);
    if (nrc < 0)
      sl_log(SL_LOG_WARN, "cannot tell the service manager we are ready",
             SL_S("notify_socket", getenv("NOTIFY_SOCKET")),
             SL_S("error", strerror(-nrc)), SL_END);
  }
  rc = sl_worker_run(&w);
  sl_notify_send("STOPPING=1");
  {
    char *status = sl_route_status_path(cfg);
    if (status)
      unlink(status);
    free(status);
  }
  sl_worker_close(&w);
  if (pid_file)
    remove_pid_file(pid_file);
  free(pid_file);
  sl_log(SL_LOG_INFO, "sluice stopped", SL_I("exit_code", rc), SL_END);
  sl_config_free(cfg);
  close(lock_fd); /* last: the folder is ours until every file is closed */
  return rc;
}

static int cmd_check(const char *path, const char *events, int strict) {
  struct sl_config *cfg = load(path, 0);
  struct sl_idgen g;
  struct sl_rules *rs;
  char err[1024];
  int warnings;
  if (cfg == NULL)
    return 1;
  sl_idgen_init(&g);
  rs = sl_rules_new(cfg, NULL, &g, NULL, err, sizeof(err));
  if (rs == NULL) {
    fprintf(stderr, "%s\nsluice: %s: rules rejected\n", err, path);
    sl_config_free(cfg);
    return 1;
  }
  sl_rules_free(rs);
  if (sl_lint_tls(cfg, path) > 0) {
    fprintf(stderr, "sluice: %s: tls files rejected\n", path);
    sl_config_free(cfg);
    return 1;
  }
  if (sl_lint_schemas(cfg, 0) > 0) {
    fprintf(stderr, "sluice: %s: schemas rejected\n", path);
    sl_config_free(cfg);
    return 1;
  }
  warnings = sl_lint_rules(cfg) + sl_lint_routes(cfg, path);
  printf("%s: ok (%d inputs, %d outputs, %d routes%s%s%s%s)\n", path,
         cfg->ninputs, cfg->noutputs, cfg->router.nroutes,
         cfg->nschemas ? ", schemas checked" : "",
         cfg->rules.dir ? ", rules in " : "",
         cfg->rules.dir ? cfg->rules.dir : "",
         warnings ? "; with warnings" : "");
  sl_lint_schemas(cfg, 1); /* what changed between versions, after ok */
  sl_config_free(cfg);
  if (warnings && strict)
    return 1;
  return events ? sl_route_gate(path, events) : 0;
}

/* SIGHUP to the engine that holds the config's state folder: the pid file
 * there, checked against the lock's holder, never a guess. */
static int cmd_reload(const char *path) {
  struct sl_config *cfg = load(path, 0);
  char why[1024];
  long pid;
  if (cfg == NULL)
    return 1;
  pid = sl_state_running_pid(cfg, why, sizeof(why));
  sl_config_free(cfg);
  if (pid <= 0) {
    fprintf(stderr, "sluice: no running engine: %s\n", why);
    return 1;
  }
  if (kill((pid_t)pid, SIGHUP) != 0) {
    fprintf(stderr, "sluice: cannot signal pid %ld: %s\n", pid,
            strerror(errno));
    return 1;
  }
  printf("sent SIGHUP to sluice (pid %ld); see the log or `sluice status` "
         "for the result\n",
         pid);
  return 0;
}

/* In the source tree (build/sluice with ../scripts) a missing
 * sluice_core.so means a `make` that built only the binary: say the
 * command that builds it. Returns 1 when it printed that. */
static int missing_core_hint(void) {
  char exe[PATH_MAX], probe[PATH_MAX + 64], *dir, *root;
  struct stat st;
  ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  if (n <= 0)
    return 0;
  exe[n] = '\0';
  dir = dirname(exe);
  snprintf(probe, sizeof(probe), "%s/../scripts/sluice/testing.lua", dir);
  if (stat(probe, &st) != 0)
    return 0;
  root = realpath(probe, NULL);
  if (root)
    root[strlen(root) - strlen("/scripts/sluice/testing.lua")] = '\0';
  fprintf(stderr, "sluice: module 'sluice_core' not found: %s/sluice_core.so "
                  "(the rule sandbox `sluice test` loads) is not built; run "
                  "`make -C %s all` and try again\n",
          dir, root ? root : "..");
  free(root);
  return 1;
}

static int cmd_test(int argc, char **argv) {
  char lpath[PATH_MAX + 32], cpath[PATH_MAX + 32], conf[PATH_MAX + 48];
  struct runtime rt;
  char **args;
  int i, k = 0;

  if (find_runtime(&rt) != 0) {
    if (missing_core_hint())
      return 1;
    fprintf(stderr, "sluice: cannot find the Lua runtime beside this binary "
                    "(../scripts and sluice_core.so in its folder, or "
                    "../share/sluice/scripts and ../lib/sluice/sluice_core.so; "
                    "`make install` puts them there)\n");
    return 1;
  }
  /* one pattern each: busted hands these to a shell when it re-runs
   * itself under luajit, and a ';' would end its command */
  snprintf(lpath, sizeof(lpath), "%s/?.lua", rt.scripts);
  snprintf(cpath, sizeof(cpath), "%s/?.so", rt.core);
  snprintf(conf, sizeof(conf), "%s/sluice/busted.lua", rt.scripts);
  args = calloc((size_t)argc + 12, sizeof(char *));
  if (args == NULL)
    return 1;
  args[k++] = "busted";
  args[k++] = "--lua=luajit";
  args[k++] = "--config-file";
  args[k++] = conf;
  args[k++] = "--lpath";
  args[k++] = lpath;
  args[k++] = "--cpath";
  args[k++] = cpath;
  args[k++] = "--pattern=_spec";
  for (i = 0; i < argc; i++)
    args[k++] = argv[i];
  if (argc == 0)
    args[k++] = "rules";
  args[k] = NULL;
  execvp("busted", args);
  fprintf(stderr, "sluice: cannot run busted: %s (make deps installs it)\n",
          strerror(errno));
  free(args);
  return 1;
}

/* `sluice plugins`: every plugin in the registry with its keys, one per
 * line: name, type, default ("required" when it has to be set), doc. */
static int cmd_plugins(void) {
  const struct sl_config_plugin *const *p;
  const struct sl_config_key *k;
  const char *const *a;
  char type[96], def[32];
  int kind;

  for (p = sl_plugins; *p; p++) {
    printf("%s %s: %s\n", sl_config_kind_name((*p)->kind), (*p)->type,
           (*p)->doc);
    for (k = (*p)->keys; k->name; k++) {
      /* a core key a plugin honours is a number of the core's table */
      size_t off = (size_t)snprintf(type, sizeof(type), "%s",
                                    k->type == SL_KEY_CORE && k->max
                                        ? "number"
                                        : sl_config_key_type_name(k->type));
      if (k->max)
        snprintf(type + off, sizeof(type) - off, " %llu..%llu",
                 (unsigned long long)k->min, (unsigned long long)k->max);
      for (a = k->choices; a && *a && off < sizeof(type); a++)
        off += (size_t)snprintf(type + off, sizeof(type) - off, "%s%s",
                                a == k->choices ? " " : "|", *a);
      snprintf(def, sizeof(def), "%s",
               k->flags & SL_KEY_REQUIRED ? "required"
               : k->def                   ? k->def
                                          : "-");
      printf("  %-20s %-22s %-9s %s\n", k->name, type, def, k->doc);
    }
  }
  /* the owners of a tls table come from the registry, so the line cannot
   * fall behind a plugin that gains one */
  printf("every tls table (");
  for (kind = SL_PLUGIN_INPUT; kind <= SL_PLUGIN_OUTPUT; kind++) {
    int n = 0;
    for (p = sl_plugins; *p; p++) {
      if ((int)(*p)->kind != kind)
        continue;
      for (k = (*p)->keys; k->name && k->type != SL_KEY_TLS; k++)
        ;
      if (k->name)
        printf("%s%s", n++ ? ", " : "", (*p)->type);
    }
    if (n)
      printf(" %ss; ", sl_config_kind_name((enum sl_plugin_kind)kind));
  }
  printf("admin) takes:\n");
  for (k = sl_config_tls_keys; k->name; k++)
    printf("  tls.%-20s %-18s %-9s %s\n", k->name,
           strcmp(k->name, "allow_subjects") == 0
               ? "string list"
               : sl_config_key_type_name(k->type),
           k->def ? k->def : "-", k->doc);
  for (kind = SL_PLUGIN_INPUT; kind <= SL_PLUGIN_OUTPUT; kind++) {
    printf("every %s takes:", sl_config_kind_name((enum sl_plugin_kind)kind));
    for (a = sl_config_core_keys((enum sl_plugin_kind)kind); *a; a++)
      printf("%s %s", a == sl_config_core_keys((enum sl_plugin_kind)kind)
                          ? "" : ",", *a);
    printf(" (see the README)\n");
  }
  return 0;
}

int main(int argc, char **argv) {
  static const struct option opts[] = {
      {"config", required_argument, NULL, 'c'},
      {"log-level", required_argument, NULL, 'l'},
      {"events", required_argument, NULL, 'e'},
      {"strict", no_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {"version", no_argument, NULL, 'V'},
      {NULL, 0, NULL, 0}};
  const char *cmd, *config = SL_CONFIG_DEFAULT_PATH, *events = NULL;
  int c, level = -1, strict = 0;

  find_scripts();
  if (argc < 2) {
    fputs(usage, stderr);
    return 2;
  }
  if (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "version") == 0) {
    printf("sluice %s\n", SL_VERSION);
    return 0;
  }
  if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
      strcmp(argv[1], "help") == 0) {
    fputs(usage, stdout);
    return 0;
  }
  cmd = argv[1];
  if (strcmp(cmd, "test") == 0)
    return cmd_test(argc - 2, argv + 2);
  if (strcmp(cmd, "dlq") == 0)
    return sl_dlq_main(argc - 2, argv + 2);
  if (strcmp(cmd, "tap") == 0)
    return sl_tap_main(argc - 1, argv + 1);
  if (strcmp(cmd, "top") == 0)
    return sl_top_main(argc - 1, argv + 1);
  optind = 2;
  while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
    switch (c) {
    case 'c':
      config = optarg;
      break;
    case 'l':
      level = sl_log_level_parse(optarg);
      if (level < 0) {
        fprintf(stderr, "sluice: --log-level: expected debug, info, warn or "
                        "error, got \"%s\"\n",
                optarg);
        return 2;
      }
      sl_log_set_level((enum sl_log_level)level);
      break;
    case 'e':
      events = optarg;
      break;
    case 's':
      strict = 1;
      break;
    case 'h':
      fputs(usage, stdout);
      return 0;
    case 'V':
      printf("sluice %s\n", SL_VERSION);
      return 0;
    default:
      fputs(usage, stderr);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "sluice: unexpected argument \"%s\"\n%s", argv[optind],
            usage);
    return 2;
  }
  if (strcmp(cmd, "run") == 0)
    return cmd_run(config, level);
  if (strcmp(cmd, "check") == 0)
    return cmd_check(config, events, strict);
  if (strcmp(cmd, "reload") == 0)
    return cmd_reload(config);
  if (strcmp(cmd, "route") == 0)
    return sl_route_main(config, events);
  if (strcmp(cmd, "status") == 0)
    return sl_route_status(config);
  if (strcmp(cmd, "plugins") == 0)
    return cmd_plugins();
  fprintf(stderr, "sluice: unknown command \"%s\"\n%s", cmd, usage);
  return 2;
}
