package mesh

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sovkeys/sovkeys/shared"
)

// Services publish and consume; they do not administer. Bootstrap, run with
// the bootstrap identity (natsauth mints it; `sovkeys init` and the
// standalone node use it), declares every stream and bucket of the mesh
// with its final configuration; services only bind (Ensure* find what
// exists and their users hold no create, update, delete or purge right).

// bucketDescriptions are the KV buckets of the mesh with plain configuration.
var bucketDescriptions = []struct{ name, description string }{
	{shared.BucketKeystores, "sovkeys: XKS key stores"},
	{shared.BucketXKSKeys, "sovkeys: XKS keys"},
	{shared.BucketPools, "sovkeys: keyworker pools"},
	{shared.BucketTenants, "sovkeys: volume-secret tenants"},
	{shared.BucketPKI, "sovkeys: public keys and CA certificates"},
	{shared.BucketKillSwitch, "sovkeys: kill switches"},
	{shared.BucketXKSRotation, "sovkeys: automatic rotation of XKS keys"},
	{shared.BucketOperators, "sovkeys: people (public nkey, roles) and the quorum policy; written by bootstrap only"},
}

// Bootstrap declares the streams and buckets of a deployment with keyworker
// pools pools: idempotent, and it moves an existing declaration to the
// configuration topo gives (one place sizes come from). The write-once
// stores are hardened (deny delete and purge; the EKT index and the audit
// log refuse overwrites), settings JetStream never lets anyone undo.
func Bootstrap(ctx context.Context, js jetstream.JetStream, topo Topology, pools []string) error {
	if err := topo.Validate(); err != nil {
		return err
	}
	logCfg := AuditLogStreamConfig(topo)
	// A version-1 audit log (no per-scope limit, records in it) keeps no
	// limit until the audit service has tiled it from record 1; run
	// `sovkeys init` again after that (docs/audit.md, "Cut-over").
	if old, err := js.Stream(ctx, logCfg.Name); err == nil {
		if info := old.CachedInfo(); info.Config.MaxMsgsPerSubject <= 0 && info.State.Msgs > 0 {
			logCfg.MaxMsgsPerSubject = -1
		}
	}
	streams := []jetstream.StreamConfig{logCfg}
	for i := range max(topo.Siblings, 1) {
		streams = append(streams, RequestStreamConfig(topo, i), AuditStreamConfig(topo, i))
		for _, p := range pools {
			if !shared.ValidPoolName(p) {
				return fmt.Errorf("%w: pool name %q", shared.ErrConfigValidation, p)
			}
			streams = append(streams, WorkStreamConfig(p, topo, i))
		}
	}
	for _, cfg := range streams {
		if _, err := declareStream(ctx, js, cfg); err != nil {
			return err
		}
	}
	for _, b := range bucketDescriptions {
		if err := declareKV(ctx, js, bucketConfig(b.name, b.description, topo)); err != nil {
			return err
		}
	}
	// The audit signer's public state: keyworkers write it (and keep the
	// real one in their HSM), nobody purges it or rolls its history up.
	if err := declareKV(ctx, js, bucketConfig(shared.BucketAuditSigner, "sovkeys: last audit checkpoint each HSM signed, per log", topo), hardenAppendOnly); err != nil {
		return err
	}
	if err := declareKV(ctx, js, UnsealBucketConfig(topo)); err != nil {
		return err
	}
	if err := declareKV(ctx, js, AdminBucketConfig(topo)); err != nil {
		return err
	}
	if err := declareKV(ctx, js, PinsBucketConfig(topo), HardenWriteOnce); err != nil { // pins.go
		return err
	}
	if err := declareObjects(ctx, js, jetstream.ObjectStoreConfig{
		Bucket: shared.BucketAuditExport, Description: "sovkeys: exported audit records and checkpoints",
		Storage: jetstream.FileStorage, Replicas: topo.Replicas,
	}, hardenAppendOnly); err != nil {
		return err
	}
	return bootstrapEKT(ctx, js, topo)
}

// bootstrapEKT declares the JetStream EKT store: the object store of blobs
// (no message deletes; nobody holds purge or delete rights on it) and its
// committed index (one value per key, never replaced, deleted or purged),
// the hardening shared/infra/writeonce checks for.
func bootstrapEKT(ctx context.Context, js jetstream.JetStream, topo Topology) error {
	if err := declareObjects(ctx, js, jetstream.ObjectStoreConfig{
		Bucket:      shared.BucketEKTObjects,
		Description: "sovkeys: write-once blobs (EKTs); names committed in " + shared.BucketEKTIndex,
		Storage:     jetstream.FileStorage,
		Replicas:    topo.Replicas,
	}, func(c *jetstream.StreamConfig) {
		c.AllowDirect = false
		// Purge cannot be denied: object puts roll their metadata up.
		c.DenyDelete = true
	}); err != nil {
		return err
	}
	return declareKV(ctx, js, jetstream.KeyValueConfig{
		Bucket:      shared.BucketEKTIndex,
		Description: "sovkeys: write-once index of " + shared.BucketEKTObjects + " (name -> object, sha256)",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    topo.Replicas,
	}, HardenWriteOnce)
}

// hardenAppendOnly makes a stream keep every message it accepts: no
// message deletes, purges or roll-ups (the audit export object store, read
// first-write-wins by shared/infra/auditlog).
func hardenAppendOnly(c *jetstream.StreamConfig) {
	c.DenyDelete = true
	c.DenyPurge = true
	c.AllowRollup = false
}

// HardenWriteOnce edits a KV stream's configuration so each key takes one
// value forever: one message per subject, new writes to a present subject
// refused, no deletes, purges or roll-ups, reads from the leader only.
func HardenWriteOnce(c *jetstream.StreamConfig) {
	c.MaxMsgsPerSubject = 1
	c.Discard = jetstream.DiscardNew
	c.DiscardNewPerSubject = true
	c.DenyDelete = true
	c.DenyPurge = true
	c.AllowRollup = false
	c.AllowDirect = false
}

// AuditLogStreamConfig is SOVKEYS_AUDITLOG: record batches and checkpoints
// of every scope, kept until deleted by hand; deletes and purges denied;
// reads go to the stream leader (no direct get).
func AuditLogStreamConfig(t Topology) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        shared.StreamAuditLog,
		Description: "sovkeys: sequenced audit records, exported as a transparency log",
		Subjects:    []string{shared.SubjectAuditRecordPrefix + ">", shared.SubjectAuditCheckpointPrefix + ">"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    t.Replicas,
		Duplicates:  2 * time.Minute,
		// Each scope keeps its newest batches only: the audit service never
		// lets a scope's unexported records reach that many, so nothing
		// goes before it is in the export bucket under a signed checkpoint.
		MaxMsgsPerSubject: AuditLogKeepBatches,
		Discard:           jetstream.DiscardOld,
		DenyDelete:        true,
		DenyPurge:         true,
		AllowDirect:       false,
	}
}

// AuditLogKeepBatches is how many record batches of one scope the audit log
// stream keeps (the audit service's default LogKeepBatches).
const AuditLogKeepBatches = 10_000

// UnsealBucketConfig is the memory-only bucket of submitted unseal shares.
func UnsealBucketConfig(t Topology) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: shared.BucketUnseal, Description: "sovkeys: submitted HSM unseal shares (memory only)",
		Storage: jetstream.MemoryStorage, Replicas: t.Replicas, History: 1, TTL: time.Hour,
	}
}

// AdminRequestTTL is how long a signed admin request waits for its quorum
// (and how long applied nonces are remembered: far past the freshness window).
const AdminRequestTTL = 24 * time.Hour

// AdminBucketConfig is the bucket of admin requests waiting for approval and
// of the nonces of applied signed requests; entries expire after twice the
// request lifetime, so an expired request is still shown as such for a day.
func AdminBucketConfig(t Topology) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket: shared.BucketAdmin, Description: "sovkeys: signed admin requests waiting for approval; nonces of applied ones",
		Storage: jetstream.FileStorage, Replicas: t.Replicas, History: 5, TTL: 2 * AdminRequestTTL,
	}
}

// declareKV creates or updates a KV bucket, then applies harden (if any) to
// its stream.
func declareKV(ctx context.Context, js jetstream.JetStream, cfg jetstream.KeyValueConfig, harden ...func(*jetstream.StreamConfig)) error {
	var err error
	for attempt := range declareRetries {
		if len(harden) > 0 {
			// A hardened bucket's stream no longer matches the KV defaults
			// (and JetStream refuses to soften it): keep it, re-harden below.
			if _, err = js.KeyValue(ctx, cfg.Bucket); err == nil {
				break
			}
		}
		if _, err = js.CreateOrUpdateKeyValue(ctx, cfg); err == nil {
			break
		}
		if ctx.Err() != nil || wait(ctx, attempt) != nil {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("mesh: bootstrap kv %s: %w", cfg.Bucket, err)
	}
	for _, h := range harden {
		if err := tune(ctx, js, shared.KVStream(cfg.Bucket), h); err != nil {
			return err
		}
	}
	return nil
}

// declareObjects creates an object store (kept as is when it exists) and
// applies harden to its stream.
func declareObjects(ctx context.Context, js jetstream.JetStream, cfg jetstream.ObjectStoreConfig, harden func(*jetstream.StreamConfig)) error {
	_, err := js.CreateObjectStore(ctx, cfg)
	if err != nil && !errors.Is(err, jetstream.ErrBucketExists) && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return fmt.Errorf("mesh: bootstrap object store %s: %w", cfg.Bucket, err)
	}
	if harden == nil {
		return nil
	}
	return tune(ctx, js, shared.ObjectStream(cfg.Bucket), harden)
}

// tune updates a stream with edit applied to its current configuration.
func tune(ctx context.Context, js jetstream.JetStream, name string, edit func(*jetstream.StreamConfig)) error {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return fmt.Errorf("mesh: bootstrap stream %s: %w", name, err)
	}
	want := st.CachedInfo().Config
	edit(&want)
	if _, err := js.UpdateStream(ctx, want); err != nil {
		return fmt.Errorf("mesh: harden stream %s: %w", name, err)
	}
	return nil
}
