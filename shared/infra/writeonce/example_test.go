package writeonce_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared/infra/writeonce"
)

// Two tenants share one EKT name: the first writer's token wins and the
// second gets it back instead of its own.
func ExampleCreateOrGet() {
	dir, _ := os.MkdirTemp("", "ektstore-example")
	defer os.RemoveAll(dir)
	ns, _ := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	ns.Start()
	defer ns.Shutdown()
	ns.ReadyForConnections(10 * time.Second)
	nc, _ := nats.Connect(ns.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)

	ctx := context.Background()
	store, err := writeonce.NewJetStream(ctx, js, 1)
	if err != nil {
		fmt.Println(err)
		return
	}
	ekt, created, _ := writeonce.CreateOrGet(ctx, store, "vpc-shared", []byte("token wrapped for tenant A"))
	fmt.Printf("%s: created=%v %q\n", store.Backend(), created, ekt)
	ekt, created, _ = writeonce.CreateOrGet(ctx, store, "vpc-shared", []byte("token wrapped for tenant B"))
	fmt.Printf("%s: created=%v %q\n", store.Backend(), created, ekt)
	// Output:
	// jetstream: created=true "token wrapped for tenant A"
	// jetstream: created=false "token wrapped for tenant A"
}
