/* schema.h - payload contracts: a documented subset of JSON Schema (draft
 * 2020-12) compiled once into a checker that walks msgpack bytes without
 * decoding them, and a comparison of two versions of a contract that tells
 * changes that break readers from compatible ones.
 *
 * Supported keywords: type (null, boolean, integer, number, string, array,
 * object, and "binary" for msgpack bin), properties, required,
 * additionalProperties (bool or schema), items, enum, const, minimum,
 * maximum, minLength, maxLength (in code points), minItems, maxItems,
 * pattern (a bounded regular-expression subset, linear time), $ref to
 * "#/$defs/<name>" or "#" within the same file, oneOf, anyOf (at most
 * SL_SCHEMA_MAX_BRANCHES branches each), and the annotations $schema, $id,
 * $defs, title, description, $comment, default, examples. Any other keyword
 * is a compile error naming it and where it is.
 * A compiled schema is read-only: one may be shared by threads.
 *
 * Semantics are draft 2020-12's (a float with zero fraction is an integer;
 * enum/const compare numbers by value, strings by bytes, containers
 * deeply; an msgpack ext matches no type). Deviations and limits, all in
 * docs/schema.md ("Keywords"): pattern is ECMA-262 syntax with \d \w ASCII,
 * $ only at the end, no backreferences or lookaround (sl_regex, regex.h);
 * minLength/maxLength apply to strings only; NaN fails minimum and maximum;
 * "items" must be a schema (no prefixItems); at most 512 required names per
 * object; $ref reaches "#" and the root's $defs only; a $ref/anyOf/oneOf
 * cycle that does not descend into the data is a compile error; a check
 * whose anyOf/oneOf over recursion would exceed 8 * (bytes + 64) * nodes
 * steps fails ("a value this schema can check in bounded time"). */
#ifndef SL_SCHEMA_H
#define SL_SCHEMA_H

#include <stddef.h>
#include <stdint.h>

#define SL_SCHEMA_MAX_BRANCHES 16  /* oneOf/anyOf branches */
#define SL_SCHEMA_MAX_DEPTH 32     /* nesting of the schema and $ref chains */

struct sl_schema;

/* Why a value does not fit: the JSON path of the first violation (JSON
 * Pointer style "/items/3/sku", "" for the root) and what was expected
 * there ("integer", "one of [\"a\",\"b\"]", "at most 10 items", ...). */
struct sl_schema_error {
  char path[256];
  char msg[192];
};

/* Compile the JSON text of one schema (json[0..n)). name is used in error
 * messages (a file name). Returns 0 and sets *out, or SL_EINVAL with err
 * naming the problem and its JSON path in the schema, or SL_ENOMEM. */
int sl_schema_compile(const char *json, size_t n, const char *name,
                      struct sl_schema **out, char *err, size_t errlen);

/* Read and compile a schema file (at most 4 MiB). Same returns. */
int sl_schema_load_file(const char *path, struct sl_schema **out, char *err,
                        size_t errlen);

/* Free; NULL is a no-op. */
void sl_schema_free(struct sl_schema *s);

/* Check one msgpack value p[0..n) (already measured as complete and valid
 * by sl_codec_skip). Returns 0 when it fits, SL_EINVAL with *e filled when
 * it does not (e may be NULL). Time is linear in n times the schema's
 * size; no allocation. */
int sl_schema_check(const struct sl_schema *s, const uint8_t *p, size_t n,
                    struct sl_schema_error *e);

/* Compare an older and a newer version of one contract, as a reader of
 * the older one sees the newer one's events. report is called once per
 * change found, breaking (1) or compatible (0), with the JSON path in the
 * schema and a sentence ("field \"sku\" removed", "type narrowed from
 * number to integer", "enum value \"x\" removed", "optional field
 * \"note\" added"). Returns the number of breaking changes. */
int sl_schema_compare(const struct sl_schema *older,
                      const struct sl_schema *newer,
                      void (*report)(void *data, int breaking,
                                     const char *path, const char *what),
                      void *data);

#endif
