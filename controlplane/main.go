// Command controlplane is one multi-call binary holding the Kubernetes control plane that
// hapod's tests run against: linking kube-apiserver, kube-controller-manager, kube-scheduler,
// etcd, kubectl and a real node's kubelet and kube-proxy together builds their large shared
// dependency graph once instead of seven times.
//
// The component is chosen by the name the binary was called by (the xtask cache holds
// symlinks named after each component) or, when called under any other name, by the first
// argument: `controlplane kube-apiserver --secure-port=...`.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	_ "time/tzdata" // CronJob time zones, as upstream's kube-apiserver and kube-controller-manager

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/client-go/plugin/pkg/client/auth" // kubectl's client auth plugins, as upstream
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"          // --logging-format=json
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric, as upstream
	kubectl "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

var components = map[string]func(args []string) int{
	"kube-apiserver": func(args []string) int {
		return runCobra(apiserver.NewAPIServerCommand(), args)
	},
	"kube-controller-manager": func(args []string) int {
		return runCobra(controllermanager.NewControllerManagerCommand(), args)
	},
	"kube-scheduler": func(args []string) int {
		return runCobra(scheduler.NewSchedulerCommand(), args)
	},
	"kubelet": func(args []string) int {
		return runCobra(kubelet.NewKubeletCommand(context.Background()), args)
	},
	"kube-proxy": func(args []string) int {
		return runCobra(proxy.NewProxyCommand(), args)
	},
	"etcd": func(args []string) int {
		// etcdmain parses args[1:] and exits the process itself on failure.
		etcdmain.Main(append([]string{"etcd"}, args...))
		return 0
	},
	"kubectl": func(args []string) int {
		// Mirrors upstream cmd/kubectl: verbosity must be known before flag parsing.
		logs.GlogSetter(kubectl.GetLogVerbosity(append([]string{"kubectl"}, args...))) //nolint:errcheck
		command := kubectl.NewDefaultKubectlCommand()
		command.SetArgs(args)
		if err := cli.RunNoErrOutput(command); err != nil {
			kubectlutil.CheckErr(err)
		}
		return 0
	},
}

func runCobra(command *cobra.Command, args []string) int {
	command.SetArgs(args)
	return cli.Run(command)
}

func main() {
	name := strings.TrimSuffix(filepath.Base(os.Args[0]), ".exe")
	args := os.Args[1:]
	run, ok := components[name]
	if !ok && len(args) > 0 {
		name, args = args[0], args[1:]
		run, ok = components[name]
	}
	if !ok {
		fmt.Fprintf(os.Stderr, "usage: %s COMPONENT [ARGS...] (or call it through a symlink named COMPONENT)\ncomponents: kube-apiserver kube-controller-manager kube-scheduler etcd kubectl kubelet kube-proxy\n", filepath.Base(os.Args[0]))
		os.Exit(2)
	}
	os.Exit(run(args))
}
