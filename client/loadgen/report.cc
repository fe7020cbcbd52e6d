#include "client/loadgen/report.h"

#include <algorithm>
#include <cmath>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "nlohmann/json.hpp"

namespace marlin::loadgen {
namespace {

std::string ErrorsText(const PointResult& p) {
  if (p.errors_by_code.empty()) return "-";
  std::vector<std::string> parts;
  for (const auto& [code, count] : p.errors_by_code)
    parts.push_back(absl::StrCat(code, ":", count));
  return absl::StrJoin(parts, " ");
}

std::string VerifyText(const PointResult& p) {
  if (p.verified == 0) return "-";
  return absl::StrCat(p.verified - p.mismatches, "/", p.verified);
}

std::string HtmlEscape(absl::string_view s) {
  return absl::StrReplaceAll(
      s, {{"&", "&amp;"}, {"<", "&lt;"}, {">", "&gt;"}, {"\"", "&quot;"}, {"'", "&#39;"}});
}

std::string CsvField(absl::string_view s) {
  if (s.find_first_of(",\"\n") == absl::string_view::npos) return std::string(s);
  return absl::StrCat("\"", absl::StrReplaceAll(s, {{"\"", "\"\""}}), "\"");
}

// A "nice" upper axis bound and tick step for values up to `max`.
std::pair<double, double> NiceAxis(double max) {
  if (!(max > 0)) return {1, 0.2};
  double exp10 = std::pow(10, std::floor(std::log10(max)));
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0}) {
    if (m * exp10 >= max) return {m * exp10, m * exp10 / 5};
  }
  return {10 * exp10, 2 * exp10};
}

std::string Num(double v) {
  if (v >= 100) return absl::StrFormat("%.0f", v);
  if (v >= 10) return absl::StrFormat("%.1f", v);
  return absl::StrFormat("%.3g", v);
}

// A latency distribution as JSON (count, mean and percentiles, in ms).
nlohmann::json SummaryJson(const LatencySummary& s) {
  return {{"count", s.count}, {"mean", s.mean_ms},  {"p50", s.p50_ms}, {"p90", s.p90_ms},
          {"p99", s.p99_ms},  {"p99.9", s.p999_ms}, {"max", s.max_ms}};
}

nlohmann::json PointJson(const PointResult& p) {
  nlohmann::json j;
  j["label"] = p.label;
  j["loop"] = p.loop;
  j["mode"] = p.mode;
  j["concurrency"] = p.concurrency;
  j["target_rate"] = p.target_rate;
  j["elapsed_s"] = p.elapsed_s;
  j["sent"] = p.sent;
  j["answers"] = p.answers;
  j["errors"] = p.errors;
  j["errors_by_code"] = p.errors_by_code;
  j["rows_answered"] = p.rows_answered;
  j["req_per_s"] = p.req_per_s;
  j["rows_per_s"] = p.rows_per_s;
  j["latency_ms"] = SummaryJson(p.latency);
  j["send_lag_ms"] = p.send_lag.count > 0 ? SummaryJson(p.send_lag) : nlohmann::json(nullptr);
  j["server_from_answers"] = {{"mean_batch_rows", p.mean_batch_rows},
                              {"mean_queue_us", p.mean_queue_us},
                              {"mean_compute_us", p.mean_compute_us}};
  if (p.metrics.has_value()) {
    nlohmann::json m;
    if (p.metrics->mean_batch_rows) m["mean_batch_rows"] = *p.metrics->mean_batch_rows;
    if (p.metrics->mean_queue_us) m["mean_queue_us"] = *p.metrics->mean_queue_us;
    if (p.metrics->mean_compute_us) m["mean_compute_us"] = *p.metrics->mean_compute_us;
    m["family_means"] = p.metrics->family_means;
    m["family_counts"] = p.metrics->family_counts;
    j["server_metrics"] = m;
  } else {
    j["server_metrics"] = nullptr;
  }
  if (!p.metrics_error.empty()) j["metrics_error"] = p.metrics_error;
  j["verify"] = {
      {"checked", p.verified}, {"mismatches", p.mismatches}, {"max_rel_error", p.max_rel_error}};
  j["warmup"] = {
      {"sent", p.warmup_sent}, {"answers", p.warmup_answers}, {"errors", p.warmup_errors}};
  return j;
}

}  // namespace

std::string FormatTable(const std::vector<PointResult>& points) {
  std::string out = absl::StrFormat(
      "%-12s %-6s %8s %8s %6s %9s %10s %8s %8s %8s %8s %8s %7s %9s %9s %-9s %-14s %s\n", "point",
      "mode", "sent", "answers", "errors", "req/s", "rows/s", "p50ms", "p90ms", "p99ms", "p99.9ms",
      "maxms", "batch", "queue_us", "comp_us", "verified", "errors_by_code", "lag_p99ms");
  for (const PointResult& p : points) {
    double batch = p.mean_batch_rows, queue = p.mean_queue_us, compute = p.mean_compute_us;
    if (p.metrics.has_value()) {
      batch = p.metrics->mean_batch_rows.value_or(batch);
      queue = p.metrics->mean_queue_us.value_or(queue);
      compute = p.metrics->mean_compute_us.value_or(compute);
    }
    absl::StrAppendFormat(&out,
                          "%-12s %-6s %8d %8d %6d %9.1f %10.1f %8.3f %8.3f %8.3f %8.3f %8.3f %7.1f "
                          "%9.1f %9.1f %-9s %-14s %s\n",
                          p.label, p.mode, p.sent, p.answers, p.errors, p.req_per_s, p.rows_per_s,
                          p.latency.p50_ms, p.latency.p90_ms, p.latency.p99_ms, p.latency.p999_ms,
                          p.latency.max_ms, batch, queue, compute, VerifyText(p), ErrorsText(p),
                          p.send_lag.count > 0 ? absl::StrFormat("%.3f", p.send_lag.p99_ms) : "-");
  }
  return out;
}

std::string ToJson(const RunInfo& info, const std::vector<PointResult>& points) {
  nlohmann::json j;
  j["tool"] = "marlin-loadgen";
  j["run"] = {{"server", info.server},
              {"server_version", info.server_version},
              {"backend", info.backend},
              {"mode", info.mode},
              {"loop", info.loop},
              {"weight_ids", info.weight_ids},
              {"rows", info.rows},
              {"duration_s", info.duration_s},
              {"warmup_s", info.warmup_s},
              {"verify_fraction", info.verify_fraction},
              {"verify_rule", info.verify_rule},
              {"started", info.started},
              {"command_line", info.command_line}};
  j["points"] = nlohmann::json::array();
  for (const PointResult& p : points) j["points"].push_back(PointJson(p));
  return j.dump(2) + "\n";
}

std::string ToCsv(const std::vector<PointResult>& points) {
  std::string out =
      "label,loop,mode,concurrency,target_rate,elapsed_s,sent,answers,errors,req_per_s,"
      "rows_per_s,p50_ms,p90_ms,p99_ms,p999_ms,max_ms,mean_ms,mean_batch_rows,mean_queue_us,"
      "mean_compute_us,metrics_batch_rows,metrics_queue_us,metrics_compute_us,verified,"
      "mismatches,errors_by_code,send_lag_p50_ms,send_lag_p99_ms,send_lag_max_ms\n";
  auto opt = [](const std::optional<ServerView>& m, std::optional<double> ServerView::*field) {
    if (!m.has_value() || !((*m).*field).has_value()) return std::string();
    return absl::StrFormat("%.3f", *((*m).*field));
  };
  for (const PointResult& p : points) {
    auto lag = [&p](double LatencySummary::*field) {
      return p.send_lag.count > 0 ? absl::StrFormat("%.4f", p.send_lag.*field) : std::string();
    };
    absl::StrAppendFormat(
        &out,
        "%s,%s,%s,%d,%.3f,%.3f,%d,%d,%d,%.3f,%.3f,%.4f,%.4f,%.4f,%.4f,%.4f,%.4f,%.3f,%.3f,"
        "%.3f,%s,%s,%s,%d,%d,%s,%s,%s,%s\n",
        CsvField(p.label), p.loop, p.mode, p.concurrency, p.target_rate, p.elapsed_s, p.sent,
        p.answers, p.errors, p.req_per_s, p.rows_per_s, p.latency.p50_ms, p.latency.p90_ms,
        p.latency.p99_ms, p.latency.p999_ms, p.latency.max_ms, p.latency.mean_ms, p.mean_batch_rows,
        p.mean_queue_us, p.mean_compute_us, opt(p.metrics, &ServerView::mean_batch_rows),
        opt(p.metrics, &ServerView::mean_queue_us), opt(p.metrics, &ServerView::mean_compute_us),
        p.verified, p.mismatches, CsvField(p.errors_by_code.empty() ? "" : ErrorsText(p)),
        lag(&LatencySummary::p50_ms), lag(&LatencySummary::p99_ms), lag(&LatencySummary::max_ms));
  }
  return out;
}

std::string ThroughputLatencySvg(const std::vector<PointResult>& points) {
  const double width = 720, height = 420, left = 70, right = 20, top = 20, bottom = 50;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  double max_x = 0, max_y = 0;
  for (const PointResult& p : points) {
    max_x = std::max(max_x, p.req_per_s);
    max_y = std::max(max_y, p.latency.p999_ms);
  }
  auto [x_top, x_step] = NiceAxis(max_x * 1.05);
  auto [y_top, y_step] = NiceAxis(max_y * 1.05);
  auto px = [&](double x) { return left + plot_w * x / x_top; };
  auto py = [&](double y) { return top + plot_h * (1 - y / y_top); };

  std::string svg = absl::StrFormat(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="12">)"
      "\n",
      width, height, width, height);
  absl::StrAppendFormat(
      &svg,
      R"(<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="#fff" stroke="#888"/>)"
      "\n",
      left, top, plot_w, plot_h);
  for (double x = 0; x <= x_top * 1.0001; x += x_step) {
    absl::StrAppendFormat(&svg,
                          R"(<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>)"
                          R"(<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>)"
                          "\n",
                          px(x), top, px(x), top + plot_h, px(x), top + plot_h + 16, Num(x));
  }
  for (double y = 0; y <= y_top * 1.0001; y += y_step) {
    absl::StrAppendFormat(&svg,
                          R"(<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#eee"/>)"
                          R"(<text x="%.1f" y="%.1f" text-anchor="end">%s</text>)"
                          "\n",
                          left, py(y), left + plot_w, py(y), left - 6, py(y) + 4, Num(y));
  }
  absl::StrAppendFormat(
      &svg,
      R"(<text x="%.1f" y="%.1f" text-anchor="middle">throughput (requests/s)</text>)"
      "\n",
      left + plot_w / 2, height - 10);
  absl::StrAppendFormat(
      &svg,
      R"svg(<text x="16" y="%.1f" text-anchor="middle" transform="rotate(-90 16 %.1f)">latency (ms)</text>)svg"
      "\n",
      top + plot_h / 2, top + plot_h / 2);
  struct Series {
    const char* name;
    const char* color;
    double LatencySummary::*field;
  };
  const Series series[] = {{"p50", "#1f77b4", &LatencySummary::p50_ms},
                           {"p99", "#d62728", &LatencySummary::p99_ms},
                           {"p99.9", "#9467bd", &LatencySummary::p999_ms}};
  // Points in sweep order, which is the order the load grew in.
  for (size_t s = 0; s < std::size(series); ++s) {
    std::vector<std::string> coords;
    for (const PointResult& p : points) {
      coords.push_back(
          absl::StrFormat("%.1f,%.1f", px(p.req_per_s), py(p.latency.*series[s].field)));
    }
    absl::StrAppendFormat(&svg,
                          R"(<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>)"
                          "\n",
                          series[s].color, absl::StrJoin(coords, " "));
    for (const PointResult& p : points) {
      absl::StrAppendFormat(
          &svg,
          R"(<circle cx="%.1f" cy="%.1f" r="3.5" fill="%s"><title>%s %s: %.1f req/s, %.3f ms</title></circle>)"
          "\n",
          px(p.req_per_s), py(p.latency.*series[s].field), series[s].color, HtmlEscape(p.label),
          series[s].name, p.req_per_s, p.latency.*series[s].field);
    }
    absl::StrAppendFormat(&svg,
                          R"(<rect x="%.1f" y="%.1f" width="12" height="4" fill="%s"/>)"
                          R"(<text x="%.1f" y="%.1f">%s</text>)"
                          "\n",
                          left + 12, top + 12 + 16 * s, series[s].color, left + 30,
                          top + 17 + 16 * s, series[s].name);
  }
  for (const PointResult& p : points) {
    absl::StrAppendFormat(&svg,
                          R"(<text x="%.1f" y="%.1f" font-size="10" fill="#555">%s</text>)"
                          "\n",
                          px(p.req_per_s) + 5, py(p.latency.p99_ms) - 5, HtmlEscape(p.label));
  }
  svg += "</svg>\n";
  return svg;
}

std::string ToHtml(const RunInfo& info, const std::vector<PointResult>& points) {
  std::string html =
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      "<title>marlin-loadgen report</title>\n<style>\n"
      "body{font-family:sans-serif;margin:2em;color:#222}\n"
      "table{border-collapse:collapse;font-size:13px}\n"
      "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}\n"
      "th{background:#f4f4f4}\ntd.l{text-align:left}\n"
      "</style>\n</head>\n<body>\n<h1>marlin-loadgen report</h1>\n";
  absl::StrAppend(&html, "<p>",
                  HtmlEscape(absl::StrCat(
                      "server ", info.server, " (", info.backend, ", version ", info.server_version,
                      "), ", info.loop, " loop, ", info.mode, " calls, weights ",
                      absl::StrJoin(info.weight_ids, ","), ", rows ", info.rows)),
                  "<br>\n",
                  HtmlEscape(absl::StrFormat("%.1f s per point after %.1f s warmup; verified "
                                             "fraction %.3f (%s); started %s",
                                             info.duration_s, info.warmup_s, info.verify_fraction,
                                             info.verify_rule, info.started)),
                  "<br>\n<code>", HtmlEscape(info.command_line), "</code></p>\n");
  html += "<h2>Throughput vs latency</h2>\n";
  html += ThroughputLatencySvg(points);
  html +=
      "<h2>Points</h2>\n<table>\n<tr><th>point</th><th>mode</th><th>sent</th><th>answers</th>"
      "<th>errors</th><th>req/s</th><th>rows/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
      "<th>p99.9 ms</th><th>max ms</th><th>batch rows</th><th>queue &micro;s</th>"
      "<th>compute &micro;s</th><th>verified</th><th>errors by code</th></tr>\n";
  for (const PointResult& p : points) {
    double batch = p.mean_batch_rows, queue = p.mean_queue_us, compute = p.mean_compute_us;
    if (p.metrics.has_value()) {
      batch = p.metrics->mean_batch_rows.value_or(batch);
      queue = p.metrics->mean_queue_us.value_or(queue);
      compute = p.metrics->mean_compute_us.value_or(compute);
    }
    absl::StrAppendFormat(
        &html,
        "<tr><td class=\"l\">%s</td><td class=\"l\">%s</td><td>%d</td><td>%d</td><td>%d</td>"
        "<td>%.1f</td><td>%.1f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td><td>%.3f</td>"
        "<td>%.3f</td><td>%.1f</td><td>%.1f</td><td>%.1f</td><td>%s</td><td class=\"l\">%s</td>"
        "</tr>\n",
        HtmlEscape(p.label), p.mode, p.sent, p.answers, p.errors, p.req_per_s, p.rows_per_s,
        p.latency.p50_ms, p.latency.p90_ms, p.latency.p99_ms, p.latency.p999_ms, p.latency.max_ms,
        batch, queue, compute, VerifyText(p), HtmlEscape(ErrorsText(p)));
  }
  html += "</table>\n</body>\n</html>\n";
  return html;
}

absl::Status WriteTextFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::PermissionDeniedError(absl::StrCat("cannot write ", path));
  out << contents;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("error writing ", path));
  return absl::OkStatus();
}

}  // namespace marlin::loadgen
