package awstest

import (
	"encoding/xml"
	"net/http"
	"time"
)

// The XML shapes of the AWS query protocol (STS 2011-06-15, EC2 2016-11-15),
// reduced to the elements sovkeys reads.

const (
	stsNamespace = "https://sts.amazonaws.com/doc/2011-06-15/"
	ec2Namespace = "http://ec2.amazonaws.com/doc/2016-11-15/"
)

type getCallerIdentityXML struct {
	XMLName xml.Name `xml:"GetCallerIdentityResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		Arn     string `xml:"Arn"`
		UserID  string `xml:"UserId"`
		Account string `xml:"Account"`
	} `xml:"GetCallerIdentityResult"`
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

func getCallerIdentityResponse(p *principal) any {
	var r getCallerIdentityXML
	r.Xmlns, r.RequestID = stsNamespace, requestID()
	r.Result.Arn, r.Result.UserID, r.Result.Account = p.arn, p.userID, p.account
	return r
}

type assumeRoleXML struct {
	XMLName xml.Name `xml:"AssumeRoleResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Result  struct {
		AssumedRoleUser struct {
			Arn           string `xml:"Arn"`
			AssumedRoleID string `xml:"AssumedRoleId"`
		} `xml:"AssumedRoleUser"`
		Credentials struct {
			AccessKeyID     string `xml:"AccessKeyId"`
			SecretAccessKey string `xml:"SecretAccessKey"`
			SessionToken    string `xml:"SessionToken"`
			Expiration      string `xml:"Expiration"`
		} `xml:"Credentials"`
		PackedPolicySize int `xml:"PackedPolicySize"`
	} `xml:"AssumeRoleResult"`
	RequestID string `xml:"ResponseMetadata>RequestId"`
}

func assumeRoleResponse(p *principal, roleID string) any {
	var r assumeRoleXML
	r.Xmlns, r.RequestID = stsNamespace, requestID()
	r.Result.AssumedRoleUser.Arn, r.Result.AssumedRoleUser.AssumedRoleID = p.arn, p.userID
	c := &r.Result.Credentials
	c.AccessKeyID, c.SecretAccessKey, c.SessionToken = p.cred.AccessKeyID, p.cred.SecretAccessKey, p.cred.SessionToken
	c.Expiration = p.cred.Expires.UTC().Format(time.RFC3339)
	return r
}

type describeInstancesXML struct {
	XMLName      xml.Name         `xml:"DescribeInstancesResponse"`
	Xmlns        string           `xml:"xmlns,attr"`
	RequestID    string           `xml:"requestId"`
	Reservations []reservationXML `xml:"reservationSet>item"`
}

type reservationXML struct {
	ReservationID string        `xml:"reservationId"`
	OwnerID       string        `xml:"ownerId"`
	Instances     []instanceXML `xml:"instancesSet>item"`
}

type instanceXML struct {
	InstanceID string `xml:"instanceId"`
	ImageID    string `xml:"imageId"`
	State      struct {
		Code int    `xml:"code"`
		Name string `xml:"name"`
	} `xml:"instanceState"`
	InstanceType string      `xml:"instanceType"`
	PrivateIP    string      `xml:"privateIpAddress,omitempty"`
	SubnetID     string      `xml:"subnetId,omitempty"`
	VPCID        string      `xml:"vpcId,omitempty"`
	Profile      *profileXML `xml:"iamInstanceProfile,omitempty"`
	Interfaces   []eniXML    `xml:"networkInterfaceSet>item"`
}

type profileXML struct {
	ARN string `xml:"arn"`
	ID  string `xml:"id"`
}

type eniXML struct {
	ID         string       `xml:"networkInterfaceId"`
	VPCID      string       `xml:"vpcId"`
	PrivateIP  string       `xml:"privateIpAddress,omitempty"`
	PrivateIPs []eniIPXML   `xml:"privateIpAddressesSet>item"`
	IPv6       []eniIPv6XML `xml:"ipv6AddressesSet>item"`
}

type eniIPXML struct {
	PrivateIP string `xml:"privateIpAddress"`
	Primary   bool   `xml:"primary"`
}

type eniIPv6XML struct {
	Address string `xml:"ipv6Address"`
}

var stateCodes = map[string]int{"pending": 0, "running": 16, "shutting-down": 32, "terminated": 48, "stopping": 64, "stopped": 80}

func describeInstancesResponse(ins []Instance) any {
	r := describeInstancesXML{Xmlns: ec2Namespace, RequestID: requestID()}
	for _, in := range ins {
		x := instanceXML{InstanceID: in.ID, ImageID: "ami-0123456789abcdef0", InstanceType: "t3.micro",
			PrivateIP: in.PrivateIP, VPCID: in.VPCID}
		x.State.Name, x.State.Code = in.State, stateCodes[in.State]
		if in.VPCID != "" {
			x.SubnetID = "subnet-0123456789abcdef0"
		}
		if in.ProfileARN != "" {
			x.Profile = &profileXML{ARN: in.ProfileARN, ID: "AIPA" + randKey(17)}
		}
		if in.PrivateIP != "" {
			x.Interfaces = append(x.Interfaces, eniXML{ID: "eni-" + randHex(17), VPCID: in.VPCID, PrivateIP: in.PrivateIP,
				PrivateIPs: []eniIPXML{{PrivateIP: in.PrivateIP, Primary: true}}})
		}
		for _, n := range in.Interfaces {
			e := eniXML{ID: "eni-" + randHex(17), VPCID: n.VPCID}
			for i, ip := range n.PrivateIPs {
				if i == 0 {
					e.PrivateIP = ip
				}
				e.PrivateIPs = append(e.PrivateIPs, eniIPXML{PrivateIP: ip, Primary: i == 0})
			}
			for _, ip := range n.IPv6 {
				e.IPv6 = append(e.IPv6, eniIPv6XML{Address: ip})
			}
			x.Interfaces = append(x.Interfaces, e)
		}
		r.Reservations = append(r.Reservations, reservationXML{ReservationID: "r-" + randHex(17), OwnerID: in.Account,
			Instances: []instanceXML{x}})
	}
	return r
}

type stsErrorXML struct {
	XMLName xml.Name `xml:"ErrorResponse"`
	Xmlns   string   `xml:"xmlns,attr"`
	Error   struct {
		Type    string `xml:"Type"`
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	} `xml:"Error"`
	RequestID string `xml:"RequestId"`
}

type ec2ErrorXML struct {
	XMLName xml.Name `xml:"Response"`
	Errors  []struct {
		Code    string `xml:"Code"`
		Message string `xml:"Message"`
	} `xml:"Errors>Error"`
	RequestID string `xml:"RequestID"`
}

// writeError answers in the error format of service (ec2, else sts).
func writeError(w http.ResponseWriter, service string, e *apiError) {
	var v any
	if service == "ec2" {
		x := ec2ErrorXML{RequestID: requestID()}
		x.Errors = append(x.Errors, struct {
			Code    string `xml:"Code"`
			Message string `xml:"Message"`
		}{e.code, e.message})
		v = x
	} else {
		x := stsErrorXML{Xmlns: stsNamespace, RequestID: requestID()}
		x.Error.Type, x.Error.Code, x.Error.Message = "Sender", e.code, e.message
		if e.status >= 500 {
			x.Error.Type = "Receiver"
		}
		v = x
	}
	b, _ := marshalXML(v)
	w.Header().Set("Content-Type", "text/xml")
	w.WriteHeader(e.status)
	_, _ = w.Write(b)
}

func marshalXML(v any) ([]byte, error) {
	b, err := xml.Marshal(v)
	if err != nil {
		return nil, err
	}
	return append([]byte(xml.Header), b...), nil
}

func requestID() string {
	h := randHex(32)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

func randHex(n int) string {
	const digits = "0123456789abcdef"
	b := []byte(randKey(n))
	for i := range b {
		b[i] = digits[int(b[i])%16]
	}
	return string(b)
}
