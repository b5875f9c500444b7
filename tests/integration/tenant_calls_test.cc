// One tenant's open calls are bounded (--max-calls-per-tenant): its watches or idle uploads
// cannot take every server thread from the other tenants.
#include <memory>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "client/connection.h"
#include "gtest/gtest.h"
#include "qlorad/v1/datasets.grpc.pb.h"
#include "tests/integration/daemon_process.h"
#include "tests/integration/rpc_client.h"
#include "tests/server/test_dirs.h"

namespace qlorad::testing {
namespace {

// An upload that sent its header and then nothing: a call held open, as a stalled client's.
struct OpenUpload {
  std::unique_ptr<grpc::ClientContext> context;
  v1::Dataset out;
  std::unique_ptr<grpc::ClientWriter<v1::UploadDatasetRequest>> writer;

  OpenUpload(const std::shared_ptr<grpc::Channel>& channel, const client::ConnectionOptions& o) {
    context = client::MakeClientContext(o, absl::Seconds(60));
    // Waits out a channel still connecting (a loaded machine): failing fast, the call ended
    // at once and held nothing, and the test saw no bound.
    context->set_wait_for_ready(true);
    writer = v1::DatasetService::NewStub(channel)->UploadDataset(context.get(), &out);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name("held");
    sent = writer->Write(header);
  }
  bool sent = false;
  ~OpenUpload() {
    context->TryCancel();
    (void)writer->Finish();
  }
};

TEST(TenantCallsTest, ATenantsOpenCallsAreBoundedAndOthersAreServed) {
  DaemonProcess daemon(FreshTestDir("tenant_calls"),
                       {"--devices=cpu:0", "--max-calls-per-tenant=2"});
  ASSERT_TRUE(daemon.Start()) << daemon.log();
  client::ConnectionOptions acme;
  acme.server = daemon.address();
  acme.token = kAcmeKey;
  auto channel = *client::CreateChannel(acme);
  {
    std::vector<std::unique_ptr<OpenUpload>> held;
    held.push_back(std::make_unique<OpenUpload>(channel, acme));
    held.push_back(std::make_unique<OpenUpload>(channel, acme));
    for (const auto& h : held) ASSERT_TRUE(h->sent) << "a held upload could not send its header";
    // The daemon counts a call once it has read its key: a third call waits for that.
    absl::StatusOr<std::vector<v1::Dataset>> third;
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    do {
      third = RpcClient(daemon.address(), kAcmeKey).ListDatasets();
    } while (third.ok() && absl::Now() < deadline);
    EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
    EXPECT_NE(third.status().message().find("--max-calls-per-tenant"), std::string::npos)
        << third.status();
    // Another tenant is served meanwhile.
    EXPECT_TRUE(RpcClient(daemon.address(), kGlobexKey).ListDatasets().ok());
  }
  // The held calls ended: acme is served again.
  absl::StatusOr<std::vector<v1::Dataset>> after;
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  do {
    after = RpcClient(daemon.address(), kAcmeKey).ListDatasets();
  } while (!after.ok() && absl::Now() < deadline);
  EXPECT_TRUE(after.ok()) << after.status();
}

}  // namespace
}  // namespace qlorad::testing
