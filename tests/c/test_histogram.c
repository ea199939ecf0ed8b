/* test_histogram.c - the shared latency histogram: buckets from 1 µs to
 * 10 s, cumulative rendering, and the +Inf bucket past the top. */
#include "histogram.h"
#include "test.h"

TEST(histogram_bounds_rise_from_a_microsecond_to_ten_seconds) {
  int i;
  CHECK(sl_histogram_bounds[0] == 1e-6);
  CHECK(sl_histogram_bounds[SL_HIST_BUCKETS - 1] == 10.0);
  for (i = 1; i < SL_HIST_BUCKETS; i++)
    CHECK(sl_histogram_bounds[i] > sl_histogram_bounds[i - 1]);
}

TEST(histogram_observe_puts_a_sample_in_the_first_bucket_that_holds_it) {
  struct sl_histogram h;
  memset(&h, 0, sizeof(h));
  sl_histogram_observe(&h, 1e-6); /* on a bound: that bucket */
  sl_histogram_observe(&h, 3.0);  /* between 2.5 and 5 */
  sl_histogram_observe(&h, 60.0); /* past the top: +Inf */
  CHECK_EQ(h.buckets[0], 1);
  CHECK_EQ(h.buckets[SL_HIST_BUCKETS - 2], 1); /* le=5 */
  CHECK_EQ(h.buckets[SL_HIST_BUCKETS], 1);
  CHECK_EQ(h.count, 3);
  CHECK(h.sum > 62.9 && h.sum < 63.1);
}

TEST(histogram_observe_agrees_with_a_linear_scan_on_and_around_every_bound) {
  struct sl_histogram h;
  double samples[3 * SL_HIST_BUCKETS + 2];
  int i, j, n = 0, want;
  for (i = 0; i < SL_HIST_BUCKETS; i++) {
    samples[n++] = sl_histogram_bounds[i];
    samples[n++] = sl_histogram_bounds[i] * 0.999;
    samples[n++] = sl_histogram_bounds[i] * 1.001;
  }
  samples[n++] = 0;
  samples[n++] = -1;
  for (j = 0; j < n; j++) {
    memset(&h, 0, sizeof(h));
    sl_histogram_observe(&h, samples[j]);
    for (want = 0; want < SL_HIST_BUCKETS &&
                   samples[j] > sl_histogram_bounds[want];
         want++)
      ;
    CHECK_EQ(h.buckets[want], 1);
  }
}

TEST(histogram_render_is_cumulative_and_ends_with_inf_sum_and_count) {
  struct sl_histogram h;
  struct sl_buf out;
  memset(&h, 0, sizeof(h));
  sl_buf_init(&out);
  sl_histogram_observe(&h, 0.002);
  sl_histogram_observe(&h, 7.0);
  CHECK_EQ(sl_histogram_render(&out, "x_seconds", "o=\"a\"", &h), 0);
  CHECK(sl_buf_append(&out, "", 1) == 0);
  CHECK(strstr((char *)out.data, "x_seconds_bucket{o=\"a\",le=\"0.001\"} 0\n"));
  CHECK(strstr((char *)out.data, "x_seconds_bucket{o=\"a\",le=\"0.005\"} 1\n"));
  CHECK(strstr((char *)out.data, "x_seconds_bucket{o=\"a\",le=\"5\"} 1\n"));
  CHECK(strstr((char *)out.data, "x_seconds_bucket{o=\"a\",le=\"10\"} 2\n"));
  CHECK(strstr((char *)out.data, "x_seconds_bucket{o=\"a\",le=\"+Inf\"} 2\n"
                                 "x_seconds_sum{o=\"a\"} 7.002000000\n"
                                 "x_seconds_count{o=\"a\"} 2\n"));
  sl_buf_close(&out);
}
