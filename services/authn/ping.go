package authn

import (
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// registerPing registers a nats micro service so that gateways' readiness
// checks ($SRV.PING.<name>) can see this process.
func registerPing(nc *nats.Conn, name string) (func(), error) {
	svc, err := micro.AddService(nc, micro.Config{Name: name, Version: "1.0.0"})
	if err != nil {
		return nil, fmt.Errorf("authn: register %s: %w", name, err)
	}
	return func() { _ = svc.Stop() }, nil
}
