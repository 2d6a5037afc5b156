package natsauth

import (
	"github.com/sovkeys/sovkeys/shared"
)

// Least privilege on the mesh: what each service's NATS user may publish and
// subscribe. Request and work queues carry plaintext (XKS encrypt bodies),
// so only their one consumer may read them; only authn may queue HSM work.
// Production clusters use the same lists in nsc-made user JWTs
// (docs/operations.md).

// jsStreamConsume lets a user declare a stream and consume it with a durable
// pull consumer.
func jsStreamConsume(stream string) []string {
	return []string{
		"$JS.API.STREAM.CREATE." + stream, "$JS.API.STREAM.UPDATE." + stream, "$JS.API.STREAM.INFO." + stream,
		"$JS.API.CONSUMER.CREATE." + stream, "$JS.API.CONSUMER.CREATE." + stream + ".>",
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".>", "$JS.API.CONSUMER.INFO." + stream + ".>",
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>", "$JS.ACK." + stream + ".>", "$JS.FC." + stream + ".>",
	}
}

// objStore lets a user declare, read and write object store b, including
// purging it (the object store API purges a replaced object's chunks).
func objStore(b string) []string {
	s := shared.ObjectStream(b)
	return []string{
		"$JS.API.STREAM.CREATE." + s, "$JS.API.STREAM.INFO." + s, "$JS.API.STREAM.UPDATE." + s,
		"$JS.API.STREAM.MSG.GET." + s, "$JS.API.STREAM.PURGE." + s,
		"$JS.API.DIRECT.GET." + s, "$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.CREATE." + s, "$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DELETE." + s + ".>", "$JS.API.CONSUMER.INFO." + s + ".>", "$JS.FC." + s + ".>",
	}
}

// jsStreamDeclare lets a user declare a stream it publishes to.
func jsStreamDeclare(stream string) []string {
	return []string{"$JS.API.STREAM.CREATE." + stream, "$JS.API.STREAM.UPDATE." + stream, "$JS.API.STREAM.INFO." + stream}
}

// kvRead lets a user declare, read and watch a KV bucket.
func kvRead(bucket string) []string {
	s := shared.KVStream(bucket)
	return []string{
		"$JS.API.STREAM.CREATE." + s, "$JS.API.STREAM.INFO." + s, "$JS.API.STREAM.MSG.GET." + s,
		"$JS.API.DIRECT.GET." + s, "$JS.API.DIRECT.GET." + s + ".>",
		"$JS.API.CONSUMER.CREATE." + s, "$JS.API.CONSUMER.CREATE." + s + ".>",
		"$JS.API.CONSUMER.DELETE." + s + ".>", "$JS.API.CONSUMER.INFO." + s + ".>", "$JS.FC." + s + ".>",
	}
}

// kvWrite adds writes to kvRead.
func kvWrite(bucket string) []string {
	return append(kvRead(bucket), shared.KVSubjects(bucket), "$JS.API.STREAM.UPDATE."+shared.KVStream(bucket))
}

func join(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// common is what every service needs: JetStream account info, replies to its
// own requests, and nats micro discovery.
var commonPub = []string{"$JS.API.INFO", "$SRV.>"}
var commonSub = []string{"_INBOX.>", "$SRV.>"}

// ServicePermissions returns the permissions of a service's user. pools
// names the keyworker pools of the deployment (their work streams).
func ServicePermissions(service string, pools []string) Permissions {
	workStreams := func(f func(string) []string) []string {
		var out []string
		for _, p := range pools {
			out = append(out, f(shared.WorkStream(p))...)
		}
		return out
	}
	switch service {
	case "gateway":
		return Permissions{
			Pub: join(commonPub,
				[]string{shared.SubjectRequestPrefix + ">", shared.SubjectAuditPrefix + ">"},
				jsStreamDeclare(shared.StreamRequests), jsStreamDeclare(shared.StreamAudit),
				kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketPKI), kvRead(shared.BucketKillSwitch)),
			Sub:     join(commonSub, []string{shared.SubjectReplyPrefix + ">"}),
			DenyPub: []string{shared.SubjectWorkPrefix + ">", shared.SubjectKeyworkerAdminPrefix + ">"},
			Respond: true,
		}
	case "authn":
		return Permissions{
			Pub: join(commonPub,
				[]string{shared.SubjectWorkPrefix + ">", shared.SubjectAuditPrefix + ">", shared.SubjectReplyPrefix + ">",
					shared.SubjectKeyworkerAdminPrefix + "*." + shared.EndpointUnseal, shared.SubjectKeyworkerAdminPrefix + "*." + shared.EndpointHealth},
				jsStreamConsume(shared.StreamRequests), jsStreamDeclare(shared.StreamAudit), workStreams(jsStreamDeclare),
				kvRead(shared.BucketKeystores), kvRead(shared.BucketXKSKeys), kvRead(shared.BucketTenants),
				kvRead(shared.BucketPKI), kvRead(shared.BucketPools), kvRead(shared.BucketKillSwitch)),
			Sub:     commonSub,
			Respond: true,
		}
	case "keyworker":
		// The HSM sidecar: its own work queues, the EKT store, PKI and pool
		// registration; it never reads requests or publishes new work.
		return Permissions{
			Pub: join(commonPub,
				[]string{shared.SubjectAuditPrefix + ">", shared.SubjectReplyPrefix + ">", shared.ObjectSubjects(shared.BucketEKTObjects)},
				objStore(shared.BucketEKTObjects),
				workStreams(jsStreamConsume), jsStreamDeclare(shared.StreamAudit),
				kvWrite(shared.BucketPools), kvWrite(shared.BucketPKI), kvWrite(shared.BucketEKTIndex), kvWrite(shared.BucketUnseal),
				kvWrite(shared.BucketAuditSigner),
				kvRead(shared.BucketTenants), kvRead(shared.BucketKillSwitch)),
			Sub:     join(commonSub, []string{shared.SubjectKeyworkerAdminPrefix + ">"}),
			Respond: true,
		}
	case "audit":
		// The audit service sequences, signs and exports: broad JetStream
		// access, but never the request/work queues (they carry plaintext)
		// and never new work.
		deny := []string{shared.SubjectWorkPrefix + ">", shared.SubjectRequestPrefix + ">"}
		for _, s := range append([]string{shared.StreamRequests}, func() []string {
			var ws []string
			for _, p := range pools {
				ws = append(ws, shared.WorkStream(p))
			}
			return ws
		}()...) {
			deny = append(deny, "$JS.API.CONSUMER.*."+s, "$JS.API.CONSUMER.*."+s+".>", "$JS.API.CONSUMER.*.*."+s+".>",
				"$JS.API.STREAM.MSG.GET."+s, "$JS.API.DIRECT.GET."+s, "$JS.API.DIRECT.GET."+s+".>")
		}
		// Nor the unseal shares.
		unsealStream := shared.KVStream(shared.BucketUnseal)
		deny = append(deny, "$JS.API.*.*."+unsealStream, "$JS.API.*.*."+unsealStream+".>", "$JS.API.DIRECT.GET."+unsealStream+".>",
			shared.KVSubjects(shared.BucketUnseal))
		// The HSM signer's record of what it signed is read-only here: the
		// audit service must not be able to roll it back.
		signerStream := shared.KVStream(shared.BucketAuditSigner)
		deny = append(deny, "$JS.API.STREAM.CREATE."+signerStream, "$JS.API.STREAM.UPDATE."+signerStream,
			"$JS.API.STREAM.DELETE."+signerStream, "$JS.API.STREAM.PURGE."+signerStream,
			"$JS.API.STREAM.MSG.DELETE."+signerStream, shared.KVSubjects(shared.BucketAuditSigner))
		return Permissions{
			Pub: join(commonPub, []string{"$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$O.>",
				shared.SubjectAuditPrefix + ">", shared.SubjectAuditRecordPrefix + ">", shared.SubjectAuditCheckpointPrefix + ">",
				shared.SubjectAuditControlPrefix + ".>",
				shared.SubjectKeyworkerAdminPrefix + "*." + shared.EndpointAuditSign, shared.SubjectKeyworkerAdminPrefix + "*." + shared.EndpointAuditPublicKey}),
			Sub:     []string{">"},
			DenyPub: deny,
			DenySub: []string{shared.SubjectWorkPrefix + ">", shared.SubjectRequestPrefix + ">", shared.SubjectReplyPrefix + ">"},
			Respond: true,
		}
	}
	// Unknown service: nothing.
	return Permissions{Pub: []string{"_sovkeys.none"}, Sub: []string{"_sovkeys.none"}}
}
