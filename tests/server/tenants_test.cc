#include "server/core/tenants.h"

#include "gtest/gtest.h"

namespace qlorad::core {
namespace {

std::string Registry() {
  return R"({"tenants": [
    {"name": "acme", "key_sha256": ")" +
         Sha256Hex("acme-secret") + R"(", "limits": {"max_concurrent_jobs": 1, "max_datasets": 5}},
    {"name": "ops", "key_sha256": ")" +
         Sha256Hex("ops-secret") + R"(", "admin": true}]})";
}

TEST(Tenants, Sha256KnownAnswer) {
  EXPECT_EQ(Sha256Hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Tenants, BearerKeysMapToTheirTenant) {
  auto reg = TenantRegistry::FromJson(Registry(), "tenants.json");
  ASSERT_TRUE(reg.ok()) << reg.status();
  auto acme = (*reg)->Authenticate("Bearer acme-secret");
  ASSERT_TRUE(acme.ok());
  EXPECT_EQ((*acme)->name, "acme");
  EXPECT_FALSE((*acme)->admin);
  EXPECT_EQ((*acme)->limits.max_concurrent_jobs, 1);
  EXPECT_EQ((*acme)->limits.max_adapters, 100);  // default
  EXPECT_EQ((*acme)->limits.max_datasets, 5);
  EXPECT_TRUE((*(*reg)->Authenticate("Bearer ops-secret"))->admin);
  for (const char* bad :
       {"", "Bearer ", "Basic acme-secret", "Bearer acme-secret2", "acme-secret"}) {
    auto r = (*reg)->Authenticate(bad);
    ASSERT_FALSE(r.ok()) << bad;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated) << bad;
    EXPECT_EQ(r.status().message().find("acme-secret"), std::string::npos);  // never echoes a key
  }
}

TEST(Tenants, BadFilesNameTheField) {
  struct Case {
    std::string json, needle;
  };
  const std::string h = Sha256Hex("k");
  const Case cases[] = {
      {"[]", "expected {\"tenants\""},
      {R"({"tenants": [{"name": "Acme!", "key_sha256": ")" + h + R"("}]})", "tenants[0].name"},
      {R"({"tenants": [{"name": "a", "key_sha256": "plain-key"}]})", "tenants[0].key_sha256"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h + R"(", "limits": {"gpus": 1}}]})",
       "unknown field 'gpus'"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h +
           R"(", "limits": {"max_adapters": -1}}]})",
       "max_adapters"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h +
           R"("}, {"name": "a", "key_sha256": ")" + Sha256Hex("other") + R"("}]})",
       "listed twice"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h +
           R"("}, {"name": "b", "key_sha256": ")" + h + R"("}]})",
       "reuses another tenant's key"},
      // Wrong types (the JSON library threw, ending the daemon) and misplaced fields (ignored).
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h + R"(", "admin": "true"}]})",
       "tenants[0].admin must be true or false"},
      {R"({"tenants": [{"name": 5, "key_sha256": ")" + h + R"("}]})", "tenants[0].name"},
      {R"({"tenants": [{"name": "a", "key_sha256": 7}]})", "tenants[0].key_sha256"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h + R"(", "is_admin": true}]})",
       "unknown field 'is_admin'"},
      {R"({"tenants": [{"name": "a", "key_sha256": ")" + h + R"(", "max_priority": 10}]})",
       "unknown field 'max_priority'"},
  };
  for (const Case& c : cases) {
    auto reg = TenantRegistry::FromJson(c.json, "t.json");
    ASSERT_FALSE(reg.ok()) << c.json;
    EXPECT_NE(reg.status().message().find(c.needle), std::string::npos) << reg.status();
  }
}

}  // namespace
}  // namespace qlorad::core
