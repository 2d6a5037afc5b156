package keyworker

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared/api/kwadmin"
	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
	"github.com/sovkeys/sovkeys/shared/infra/roster"
)

// asPerson puts a person with roles on the roster and returns ctx signing
// admin requests as them.
func asPerson(ctx context.Context, t *testing.T, js jetstream.JetStream, name string, roles ...natsauth.Role) context.Context {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	r, err := roster.Open(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Put(ctx, roster.Person{Name: name, PublicKey: pub, Roles: roles, Added: time.Now()}); err != nil {
		t.Fatal(err)
	}
	return kwadmin.WithSigner(ctx, roster.NewSigner(name, kp, nil))
}
