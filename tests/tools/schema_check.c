/* schema_check.c - the schema checker from the command line, for the
 * differential test against Python's jsonschema and for callgrind:
 *   schema_check [-n N] SCHEMA.json [DOCS]
 * compiles SCHEMA.json and checks each line of DOCS (or stdin), one JSON
 * document per line, printing "valid", "invalid <path>: <expected>" or
 * "error <why>" (the line is not JSON) per line. -n N checks each document
 * N times (instruction counts per check under callgrind). Exits 2 when the
 * schema does not compile (the error on stderr), else 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "json.h"
#include "schema.h"

int main(int argc, char **argv) {
  struct sl_schema *s;
  struct sl_schema_error e;
  struct sl_buf mp;
  char err[512], msg[160];
  char *line = NULL;
  size_t cap = 0;
  ssize_t got;
  long reps = 1, i;
  int arg = 1, rc;
  FILE *in = stdin;

  if (argc > 2 && strcmp(argv[1], "-n") == 0) {
    reps = atol(argv[2]);
    arg = 3;
  }
  if (arg >= argc || reps < 1) {
    fprintf(stderr, "usage: schema_check [-n N] SCHEMA.json [DOCS]\n");
    return 2;
  }
  if (sl_schema_load_file(argv[arg], &s, err, sizeof(err)) != 0) {
    fprintf(stderr, "%s\n", err);
    return 2;
  }
  if (arg + 1 < argc && (in = fopen(argv[arg + 1], "r")) == NULL) {
    perror(argv[arg + 1]);
    sl_schema_free(s);
    return 2;
  }
  sl_buf_init(&mp);
  while ((got = getline(&line, &cap, in)) > 0) {
    while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r'))
      got--;
    sl_buf_reset(&mp);
    if (sl_json_to_msgpack(line, (size_t)got, &mp, msg, sizeof(msg)) != 0) {
      printf("error %s\n", msg);
      continue;
    }
    rc = 0;
    for (i = 0; i < reps; i++)
      rc = sl_schema_check(s, mp.data, mp.len, &e);
    if (rc == 0)
      printf("valid\n");
    else
      printf("invalid %s: %s\n", e.path, e.msg);
  }
  free(line);
  sl_buf_close(&mp);
  if (in != stdin)
    fclose(in);
  sl_schema_free(s);
  return 0;
}
