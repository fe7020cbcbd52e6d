#include "server/logging/log.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace marlin::log {
namespace {

std::vector<std::string>* captured = nullptr;
void Capture(absl::string_view line) { captured->emplace_back(line); }

class LogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    captured = &lines_;
    SetSink(&Capture);
  }
  void TearDown() override {
    SetSink(nullptr);
    SetMinLevel(Level::kInfo);
    captured = nullptr;
  }
  std::vector<std::string> lines_;
};

TEST_F(LogTest, WritesOneLogfmtLine) {
  MARLIN_LOG(kInfo, "weight loaded").Kv("id", "w1").Kv("bytes", 42).Kv("note", "two words");
  ASSERT_EQ(lines_.size(), 1u);
  const std::string& l = lines_[0];
  EXPECT_EQ(l.rfind("ts=", 0), 0u) << l;
  EXPECT_NE(l.find(" level=info msg=\"weight loaded\" id=w1 bytes=42 note=\"two words\"\n"),
            std::string::npos)
      << l;
  EXPECT_EQ(l.find('\n'), l.size() - 1);
}

TEST_F(LogTest, DropsLinesBelowTheMinimumWithoutEvaluating) {
  int evaluated = 0;
  auto count = [&] { return ++evaluated; };
  MARLIN_LOG(kDebug, "hidden").Kv("n", count());
  EXPECT_TRUE(lines_.empty());
  EXPECT_EQ(evaluated, 0);
  SetMinLevel(Level::kDebug);
  MARLIN_LOG(kDebug, "shown").Kv("n", count());
  EXPECT_EQ(lines_.size(), 1u);
  EXPECT_EQ(evaluated, 1);
}

TEST_F(LogTest, QuotesAndEscapes) {
  EXPECT_EQ(QuoteValue("plain"), "plain");
  EXPECT_EQ(QuoteValue(""), "\"\"");
  EXPECT_EQ(QuoteValue("a=b"), "\"a=b\"");
  EXPECT_EQ(QuoteValue("say \"hi\"\n"), "\"say \\\"hi\\\"\\n\"");
}

TEST_F(LogTest, ParsesLevels) {
  Level level;
  EXPECT_TRUE(ParseLevel("DEBUG", &level).ok());
  EXPECT_EQ(level, Level::kDebug);
  EXPECT_FALSE(ParseLevel("loud", &level).ok());
}

}  // namespace
}  // namespace marlin::log
