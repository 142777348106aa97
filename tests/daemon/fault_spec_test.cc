// ParseFaultSpec: the test flag's grammar, and that a bad spec is refused with the rule named (the
// daemon then refuses to start rather than run with half a fault plan).
#include "daemon/fault_spec.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "daemon/config.h"

namespace kvtier {
namespace {

TEST(FaultSpec, EmptySpecMeansNoFaults) {
  auto p = ParseFaultSpec("");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_TRUE(p->empty());
}

TEST(FaultSpec, ParsesDiskAndDeviceRules) {
  auto p = ParseFaultSpec(
      "ssd_write:error:p=0.02; ssd_write:enospc:skip=3,count=2; ssd_write:short:bytes=4096;"
      "ssd_read:delay:ms=30,p=0.5;ssd_sync:hang;device_pagein:fail:p=0.01;device_pageout:delay:ms=5;seed=7");
  ASSERT_TRUE(p.ok()) << p.status();
  ASSERT_EQ(p->ssd.size(), 5u);
  ASSERT_EQ(p->device.size(), 2u);
  EXPECT_EQ(p->seed, 7u);
  EXPECT_EQ(p->ssd[0].kind, IoKind::kWrite);
  EXPECT_EQ(p->ssd[0].action, FaultAction::kError);
  EXPECT_EQ(p->ssd[0].error, EIO);
  EXPECT_DOUBLE_EQ(p->ssd[0].probability, 0.02);
  EXPECT_EQ(p->ssd[1].error, ENOSPC);
  EXPECT_EQ(p->ssd[1].skip, 3);
  EXPECT_EQ(p->ssd[1].count, 2);
  EXPECT_EQ(p->ssd[2].action, FaultAction::kShortWrite);
  EXPECT_EQ(p->ssd[2].bytes, 4096u);
  EXPECT_EQ(p->ssd[3].kind, IoKind::kRead);
  EXPECT_EQ(p->ssd[3].delay, absl::Milliseconds(30));
  EXPECT_EQ(p->ssd[4].kind, IoKind::kSync);
  EXPECT_EQ(p->ssd[4].action, FaultAction::kHang);
  EXPECT_EQ(p->device[0].op, DeviceOp::kPageIn);
  EXPECT_TRUE(p->device[0].fail);
  EXPECT_FALSE(p->device[1].fail);
  EXPECT_EQ(p->device[1].delay, absl::Milliseconds(5));
}

TEST(FaultSpec, RejectsMalformedRulesNamingThem) {
  for (const char* bad :
       {"ssd_write", "ssd_write:explode", "disk_write:error", "ssd_read:short", "ssd_write:error:p=2",
        "ssd_write:error:p=x", "device_pagein:hang", "ssd_read:delay:ms=-1", "seed=abc", "ssd_write:error:volume=11"}) {
    auto p = ParseFaultSpec(bad);
    EXPECT_FALSE(p.ok()) << bad;
    EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(FaultSpec, ConfigValidationRefusesABadSpecAndTimeout) {
  auto c = DefaultConfig();
  c.set_fault_spec("ssd_write:nope");
  EXPECT_FALSE(ValidateConfig(c).ok());
  c.set_fault_spec("ssd_write:error:p=0.1");
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.set_ssd_io_timeout_ms(-5);
  EXPECT_FALSE(ValidateConfig(c).ok());
  c.set_ssd_io_timeout_ms(0);
  c.set_ssd_min_free_fraction(0.95);
  EXPECT_FALSE(ValidateConfig(c).ok());
  c.set_ssd_min_free_fraction(0.2);
  EXPECT_TRUE(ValidateConfig(c).ok());
  c.set_ssd_durability("fsync");
  EXPECT_FALSE(ValidateConfig(c).ok());
  for (const char* ok : {"", "process_crash", "power_loss"}) {
    c.set_ssd_durability(ok);
    EXPECT_TRUE(ValidateConfig(c).ok()) << ok;
  }
}

}  // namespace
}  // namespace kvtier
