// Command pstest serves Google's in-memory Pub/Sub fake (cloud.google.com/go/pubsub/v2/pstest)
// over plaintext gRPC on 127.0.0.1, for nbstream's pubsub sink tests.
//
// It prints "ready <host:port>" on stdout once it accepts connections and serves until it is
// sent SIGTERM or SIGINT.
//
// Each --fail flag makes Publish fail for one topic, optionally only for requests carrying one
// ordering key, with a gRPC status code, for the first N requests (default: always) and with an
// optional google.rpc.RetryInfo delay:
//
//	--fail topic=projects/p/topics/t,key=dcim.device:2,code=UNAVAILABLE,times=1,retry_delay=2s
//
// The fake itself is Google's, used through its public reactor hook; nothing of it is copied.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	pb "cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"cloud.google.com/go/pubsub/v2/pstest"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// fault fails matching Publish requests; it is safe for concurrent use.
type fault struct {
	topic      string
	key        string // empty: any ordering key
	code       codes.Code
	times      int // < 0: always
	retryDelay time.Duration

	mu   sync.Mutex
	used int
}

// React implements pstest.Reactor: it fails the request when it matches and has uses left.
func (f *fault) React(req interface{}) (bool, interface{}, error) {
	pr, ok := req.(*pb.PublishRequest)
	if !ok || pr.GetTopic() != f.topic || !f.matchesKey(pr) {
		return false, nil, nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.times >= 0 && f.used >= f.times {
		return false, nil, nil
	}
	f.used++
	st := status.New(f.code, fmt.Sprintf("injected %s for %s", f.code, f.topic))
	if f.retryDelay > 0 {
		if withInfo, err := st.WithDetails(&errdetails.RetryInfo{
			RetryDelay: durationpb.New(f.retryDelay),
		}); err == nil {
			st = withInfo
		}
	}
	return true, nil, st.Err()
}

// matchesKey reports whether the request carries the fault's ordering key (or any, if unset).
func (f *fault) matchesKey(pr *pb.PublishRequest) bool {
	if f.key == "" {
		return true
	}
	for _, m := range pr.GetMessages() {
		if m.GetOrderingKey() == f.key {
			return true
		}
	}
	return false
}

// faults collects the repeatable --fail flag.
type faults []*fault

func (fs *faults) String() string { return fmt.Sprintf("%d fault(s)", len(*fs)) }

// Set parses one "topic=...,key=...,code=...,times=...,retry_delay=..." specification.
func (fs *faults) Set(spec string) error {
	f := &fault{times: -1}
	for _, part := range strings.Split(spec, ",") {
		name, value, ok := strings.Cut(part, "=")
		if !ok {
			return fmt.Errorf("%q: want name=value", part)
		}
		switch name {
		case "topic":
			f.topic = value
		case "key":
			f.key = value
		case "code":
			c, found := parseCode(value)
			if !found {
				return fmt.Errorf("unknown gRPC code %q", value)
			}
			f.code = c
		case "times":
			n, err := strconv.Atoi(value)
			if err != nil {
				return err
			}
			f.times = n
		case "retry_delay":
			d, err := time.ParseDuration(value)
			if err != nil {
				return err
			}
			f.retryDelay = d
		default:
			return fmt.Errorf("unknown field %q", name)
		}
	}
	if f.topic == "" || f.code == codes.OK {
		return fmt.Errorf("%q: topic and code are required", spec)
	}
	*fs = append(*fs, f)
	return nil
}

// parseCode returns the gRPC code named canonically (UNAVAILABLE, DEADLINE_EXCEEDED, ...).
func parseCode(name string) (codes.Code, bool) {
	// codes.Code.String gives "DeadlineExceeded": compare without case and underscores.
	plain := strings.ReplaceAll(name, "_", "")
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if strings.EqualFold(plain, c.String()) {
			return c, true
		}
	}
	return codes.OK, false
}

func main() {
	port := flag.Int("port", 0, "TCP port on 127.0.0.1 to listen on (0: any free port)")
	var fs faults
	flag.Var(&fs, "fail", "fail Publish: topic=T[,key=K],code=CODE[,times=N][,retry_delay=D]")
	flag.Parse()

	opts := make([]pstest.ServerReactorOption, 0, len(fs))
	for _, f := range fs {
		opts = append(opts, pstest.ServerReactorOption{FuncName: "Publish", Reactor: f})
	}
	srv := pstest.NewServerWithAddress(fmt.Sprintf("127.0.0.1:%d", *port), opts...)
	fmt.Printf("ready %s\n", srv.Addr)

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	<-stop
	_ = srv.Close()
}
