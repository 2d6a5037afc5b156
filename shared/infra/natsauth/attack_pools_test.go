package natsauth_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
	"github.com/sovkeys/sovkeys/shared/infra/mesh"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/testkit/natstest"
)

// Two pools, one keyworker user each (as cluster init mints them): the
// credential of pool A reads none of pool B's work or admin requests and
// writes none of its keys; nobody replaces a pinned signing key, not even
// the pool's own keyworkers.
func TestAttackKeyworkerOfOnePoolCannotTouchAnother(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	trust, err := natsauth.LoadOrCreate(filepath.Join(dir, "trust"))
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, trust.Configure)
	m := &mesh4{ns: ns, dir: dir, trust: trust}
	kwA, kwB := shared.KeyworkerUser("pa"), shared.KeyworkerUser("pb")
	for user, p := range map[string]natsauth.Permissions{
		kwA:                   natsauth.UserPermissions(kwA, natsauth.ServiceKeyworker, []string{"pa"}),
		kwB:                   natsauth.UserPermissions(kwB, natsauth.ServiceKeyworker, []string{"pb"}),
		natsauth.ServiceAuthn: natsauth.ServicePermissions(natsauth.ServiceAuthn, []string{"pa", "pb"}),
		shared.UserBootstrap:  natsauth.BootstrapPermissions(),
	} {
		if err := trust.WriteUserCreds(m.creds(user), user, p); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bnc, bjs := m.connect(t, shared.UserBootstrap, nil)
	if err := mesh.Bootstrap(ctx, bjs, mesh.DefaultTopology(), []string{"pa", "pb"}); err != nil {
		t.Fatal(err)
	}
	bnc.Close()

	// Pool B's keyworker pins its signing key, as at its first start.
	_, jsB := m.connect(t, kwB, nil)
	pinsB, err := jsB.KeyValue(ctx, shared.BucketPins)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pinsB.Create(ctx, shared.PKISigningKey("pb"), []byte("pool B's key")); err != nil {
		t.Fatalf("pool B's keyworker cannot pin its key: %v", err)
	}
	// ... and cannot replace it afterwards (the bucket refuses a second value).
	if _, err := pinsB.Put(ctx, shared.PKISigningKey("pb"), []byte("replaced")); err == nil {
		t.Fatal("the pinned signing key was replaced by its own pool's keyworker")
	}

	// Pool A's credential: pool B's queue, admin requests and keys are out of reach.
	m.refusedSub(t, kwA, shared.KeyworkerAdminSubject("pb", shared.EndpointSeal))
	m.refusedSub(t, kwA, shared.KeyworkerAdminSubject("pb", shared.EndpointUnseal))
	m.refusedSub(t, kwA, shared.SubjectWorkPrefix+"pb.>")
	work := shared.WorkStream("pb")
	m.refusedPub(t, kwA, "bind pool B's work consumer", shared.JSConsumerCreate+work+"."+shared.WorkConsumer("pb"))
	m.refusedPub(t, kwA, "pull pool B's work", shared.JSConsumerNext+work+"."+shared.WorkConsumer("pb"))
	m.refusedPub(t, kwA, "read pool B's work", shared.JSDirectGet+work)
	for _, key := range []string{shared.PKISigningKey("pb"), shared.PKIInstanceCA("pb")} {
		m.refusedPub(t, kwA, "write pool B's PKI", shared.SubjectKVPrefix+shared.BucketPKI+"."+key)
		m.refusedPub(t, kwA, "write pool B's pins", shared.SubjectKVPrefix+shared.BucketPins+"."+key)
	}
	// authn reads the pins (to verify answers) and writes none.
	m.refusedPub(t, natsauth.ServiceAuthn, "write a pin", shared.SubjectKVPrefix+shared.BucketPins+"."+shared.PKISigningKey("pa"))
	_, jsAuthn := m.connect(t, natsauth.ServiceAuthn, nil)
	pins, err := jsAuthn.KeyValue(ctx, shared.BucketPins)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := pins.Get(ctx, shared.PKISigningKey("pb")); err != nil || string(e.Value()) != "pool B's key" {
		t.Fatalf("authn reads the pinned key: %v", err)
	}
	// Pool A's own work is served: its consumer binds with its filter.
	_, jsA := m.connect(t, kwA, nil)
	streams, err := mesh.EnsureWorkStreams(ctx, jsA, "pa", mesh.DefaultTopology())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := mesh.CreateFilteredConsumers(ctx, streams, func(i int) string { return shared.WorkSubjectOn(i, "pa", "") + ">" },
		jetstream.ConsumerConfig{Durable: shared.WorkConsumer("pa"), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatalf("pool A's keyworker cannot bind its own filtered consumer: %v", err)
	}
}
