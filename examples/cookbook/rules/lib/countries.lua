-- lib/countries.lua - a lookup table shipped beside the rules; rules
-- `require("countries")` it. Keep such tables small: each rule that
-- requires one holds a copy in its own memory (rules.memory_mb).
return {
  DE = { name = "Germany", region = "eu", currency = "EUR" },
  FR = { name = "France", region = "eu", currency = "EUR" },
  US = { name = "United States", region = "us", currency = "USD" },
  JP = { name = "Japan", region = "apac", currency = "JPY" },
}
