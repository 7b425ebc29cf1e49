-- wrk script for the gateway benchmark: POST one non-streaming chat completion per request,
-- then print one line "BENCHJSON {...}" with the counts and latency percentiles (microseconds).
-- Environment: BENCH_PATH (/v1/chat/completions), BENCH_MODEL (fake), BENCH_KEY (API key, sent
-- as "Authorization: Bearer KEY" when set), BENCH_TOKENS (completion tokens the fake backend
-- returns, 16).
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local model = os.getenv("BENCH_MODEL") or "fake"
local key = os.getenv("BENCH_KEY") or ""
local tokens = tonumber(os.getenv("BENCH_TOKENS") or "16")

wrk.method = "POST"
wrk.path = path
wrk.headers["Content-Type"] = "application/json"
if key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end
wrk.body = string.format(
  '{"model":"%s","messages":[{"role":"user","content":"Say hello in one short sentence."}],'
  .. '"max_tokens":%d,"stream":false,"fake_chunks":%d}', model, tokens, tokens)

done = function(summary, latency, requests)
  local e = summary.errors
  local p = function(q) return latency:percentile(q) end
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,'
    .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
    .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    p(50), p(90), p(99), latency.max, latency.mean))
end
