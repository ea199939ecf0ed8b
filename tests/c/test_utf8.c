/* test_utf8.c - the one UTF-8 validator: what RFC 3629 allows, and the
 * length of the ill-formed prefix a renderer turns into one U+FFFD. */
#include "test.h"
#include "utf8.h"

#define VALID(lit) sl_utf8_valid(lit, sizeof(lit) - 1)

TEST(utf8_accepts_every_well_formed_length) {
  CHECK(VALID(""));
  CHECK(VALID("plain ascii"));
  CHECK(VALID("\xc2\xa9"));         /* U+00A9 */
  CHECK(VALID("\xe2\x82\xac"));     /* U+20AC */
  CHECK(VALID("\xed\x9f\xbf"));     /* U+D7FF, below the surrogates */
  CHECK(VALID("\xf0\x9f\x98\x80")); /* U+1F600 */
  CHECK(VALID("\xf4\x8f\xbf\xbf")); /* U+10FFFF */
}

TEST(utf8_refuses_overlongs_surrogates_and_past_the_last_code_point) {
  CHECK(!VALID("\xc0\xaf"));         /* overlong '/' */
  CHECK(!VALID("\xc1\xbf"));
  CHECK(!VALID("\xe0\x9f\xbf"));     /* overlong */
  CHECK(!VALID("\xed\xa0\x80"));     /* U+D800 */
  CHECK(!VALID("\xf0\x8f\xbf\xbf")); /* overlong */
  CHECK(!VALID("\xf4\x90\x80\x80")); /* U+110000 */
  CHECK(!VALID("\xf5\x80\x80\x80"));
  CHECK(!VALID("\xff"));
  CHECK(!VALID("a\x80"));            /* stray continuation */
  CHECK(!VALID("\xe2\x82"));         /* cut short */
}

TEST(utf8_seq_gives_the_ill_formed_prefix_length) {
  size_t bad = 99;
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"A", 1, &bad), 1);
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"\xe2\x82\xac", 3, &bad), 3);
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"\xe2\x82", 2, &bad), 0);
  CHECK_EQ(bad, 2); /* a truncated sequence is one replacement */
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"\xe2(", 2, &bad), 0);
  CHECK_EQ(bad, 1);
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"\x80", 1, &bad), 0);
  CHECK_EQ(bad, 1);
  CHECK_EQ(sl_utf8_seq((const uint8_t *)"\xed\xa0\x80", 3, NULL), 0);
}
