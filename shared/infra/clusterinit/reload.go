package clusterinit

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/sovkeys/sovkeys/shared/infra/natsauth"
)

// How the nodes take a new account JWT (2026-12-07): the configs preload
// it into a MEMORY resolver, and a config reload re-reads the preloads and
// applies the account's revocations at once, closing the connections of
// revoked users (nats-server reloadAuthorization). `$SYS.REQ.CLAIMS.UPDATE`
// needs a full (directory) resolver, which would keep a second copy of the
// account state on every node; the reload request over the system account
// ($SYS.REQ.SERVER.<id>.RELOAD, nats-server 2.10+) does the same as SIGHUP
// without a shell on the node. Each node re-reads its own file: on a
// cluster spread over hosts, copy DIR/nats/<node>.conf first.

const (
	subjServerPing   = "$SYS.REQ.SERVER.PING"
	subjServerReload = "$SYS.REQ.SERVER.%s.RELOAD"
)

// ReloadConfig says which running nodes Reload asks.
type ReloadConfig struct {
	Dir     string        // the cluster init output directory (trust/, cluster.json)
	URLs    string        // client URLs of the nodes (Result.URLs)
	CAFile  string        // the CA the nodes' TLS certificates chain to
	Nodes   int           // nodes expected to answer
	Timeout time.Duration // for the whole exchange (default 10s)
}

// Reload asks every running node of the cluster to reload its
// configuration file, with a user of the system account issued for this
// call only (five minutes, nothing on disk). It returns the names of the
// servers that reloaded; an error when fewer than cfg.Nodes did.
func Reload(ctx context.Context, cfg ReloadConfig) ([]string, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if _, err := os.Stat(filepath.Join(cfg.Dir, "trust", "system.nk")); err != nil {
		return nil, fmt.Errorf("%w: %s holds no cluster trust: %v", ErrInit, cfg.Dir, err)
	}
	trust, err := natsauth.LoadOrCreate(filepath.Join(cfg.Dir, "trust"))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInit, err)
	}
	creds, err := trust.SystemUserCreds("sovkeys-reload", natsauth.Permissions{
		Pub: []string{subjServerPing, fmt.Sprintf(subjServerReload, "*")},
		Sub: []string{"_INBOX.>"},
	}, 5*time.Minute)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInit, err)
	}
	tok, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	kp, err := nkeys.ParseDecoratedNKey(creds)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	seed, err := kp.Seed()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	opts := []nats.Option{nats.Name("sovkeys-cluster-reload"), nats.UserJWTAndSeed(tok, string(seed)), nats.Timeout(cfg.Timeout)}
	if cfg.CAFile != "" {
		opts = append(opts, nats.RootCAs(cfg.CAFile))
	}
	nc, err := nats.Connect(cfg.URLs, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: reaching the nodes: %v", ErrInit, err)
	}
	defer nc.Close()
	// Every server answers the ping; wait for cfg.Nodes answers or the end.
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest(subjServerPing, inbox, nil); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInit, err)
	}
	type info struct {
		Server struct {
			ID   string `json:"id"`
			Name string `json:"name"`
		} `json:"server"`
	}
	ids := map[string]string{}
	pingCtx, pingCancel := context.WithTimeout(ctx, min(cfg.Timeout/2, 3*time.Second))
	defer pingCancel()
	for len(ids) < max(cfg.Nodes, 1) {
		m, err := sub.NextMsgWithContext(pingCtx)
		if err != nil {
			break
		}
		var in info
		if json.Unmarshal(m.Data, &in) == nil && in.Server.ID != "" {
			ids[in.Server.ID] = in.Server.Name
		}
	}
	var done, failed []string
	for id, name := range ids {
		m, err := nc.RequestWithContext(ctx, fmt.Sprintf(subjServerReload, id), nil)
		if err == nil {
			var r struct {
				Error *struct {
					Description string `json:"description"`
				} `json:"error"`
			}
			if json.Unmarshal(m.Data, &r) == nil && r.Error != nil {
				err = fmt.Errorf("%s", r.Error.Description)
			}
		}
		if err != nil {
			failed = append(failed, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		done = append(done, name)
	}
	if len(failed) > 0 || len(done) < cfg.Nodes {
		return done, fmt.Errorf("%w: %d of %d nodes reloaded (%s)", ErrInit, len(done), cfg.Nodes, strings.Join(failed, "; "))
	}
	return done, nil
}
