import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from '@cdktf/hcl2json';

// The AWS module in terraform/. Providers cannot be downloaded in CI, so the HCL is parsed and
// its meaning asserted here; a local copy of the AWS provider, when there is one, adds a plan.

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };
type Block = { [k: string]: Json };

const moduleDir = fileURLToPath(new URL('../../../terraform/', import.meta.url));
const tmp = mkdtempSync(path.join(os.tmpdir(), 'nebulagc-terraform-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

const ref = (expr: string): string => `\${${expr}}`;
const isBlock = (v: Json | undefined): v is Block => typeof v === 'object' && v !== null && !Array.isArray(v);

function blocks(b: Block, key: string): Block[] {
  const v = b[key];
  if (v === undefined) return [];
  assert.ok(Array.isArray(v) && v.every(isBlock), `${key} is a list of blocks`);
  return v as Block[];
}

function one(b: Block, key: string): Block {
  const list = blocks(b, key);
  assert.equal(list.length, 1, `exactly one ${key} block`);
  return list[0]!;
}

function child(b: Block, key: string): Block {
  const v = b[key];
  assert.ok(isBlock(v), `${key} is an object`);
  return v;
}

function strings(v: Json | undefined): string[] {
  assert.ok(Array.isArray(v) && v.every((s) => typeof s === 'string'), 'a list of strings');
  return v as string[];
}

/** Files are merged the way Terraform sees them: one module, names unique across files. */
function merge(into: Block, from: Block): void {
  for (const [k, v] of Object.entries(from)) {
    const cur = into[k];
    if (isBlock(cur) && isBlock(v)) merge(cur, v);
    else if (Array.isArray(cur) && Array.isArray(v)) cur.push(...v);
    else {
      assert.equal(cur, undefined, `${k} is defined twice`);
      into[k] = v;
    }
  }
}

let config: Block = {};
let template = '';

before(async () => {
  const files = readdirSync(moduleDir).filter((f) => f.endsWith('.tf')).sort();
  assert.ok(files.length > 0, 'terraform/ has .tf files');
  for (const f of files) merge(config, (await parse(f, readFileSync(path.join(moduleDir, f), 'utf8'))) as Block);
  template = readFileSync(path.join(moduleDir, 'user-data.sh.tftpl'), 'utf8');
});

const resources = (type: string): Map<string, Block> => {
  const byName = isBlock(config['resource']) ? config['resource'][type] : undefined;
  if (!isBlock(byName)) return new Map();
  return new Map(Object.keys(byName).map((name) => [name, one(byName, name)]));
};
const resource = (type: string, name: string): Block => {
  const r = resources(type).get(name);
  assert.ok(r, `resource ${type}.${name} exists`);
  return r;
};
const dataSource = (type: string, name: string): Block => one(child(child(config, 'data'), type), name);
const variable = (name: string): Block => one(child(config, 'variable'), name);
const local = (name: string): Json => {
  const found = blocks(config, 'locals').find((l) => name in l);
  assert.ok(found, `local.${name} exists`);
  return found[name]!;
};

/** A number, or a bare reference to a variable, resolved to the variable's default. */
function resolveNumber(v: Json | undefined): number {
  if (typeof v === 'number') return v;
  const m = typeof v === 'string' ? /^\$\{var\.([a-z0-9_]+)\}$/.exec(v) : null;
  assert.ok(m, `${JSON.stringify(v)} is a number or var.<name>`);
  const d = variable(m[1]!)['default'];
  assert.equal(typeof d, 'number', `var.${m[1]} has a numeric default`);
  return d as number;
}

const WRITE = ref('aws_lb_target_group.write.arn');
const READ = ref('aws_lb_target_group.read.arn');
const SG = {
  alb: ref('aws_security_group.alb.id'),
  server: ref('aws_security_group.server.id'),
  coordinator: ref('aws_security_group.coordinator.id'),
};

describe('terraform/: the AWS module', () => {
  it('passes terraform fmt -check -recursive', () => {
    const r = spawnSync('terraform', ['fmt', '-check', '-recursive', '-no-color', moduleDir], { encoding: 'utf8' });
    assert.equal(r.error, undefined, `terraform must be installed: ${r.error?.message}`);
    assert.equal(r.status, 0, `files terraform fmt would change:\n${r.stdout}${r.stderr}`);
  });

  it('pins the AWS provider to ~> 5.0, and every variable and output is described', () => {
    const tf = one(config, 'terraform');
    const aws = child(one(tf, 'required_providers'), 'aws');
    assert.equal(aws['source'], 'hashicorp/aws');
    assert.equal(aws['version'], '~> 5.0');
    assert.match(String(tf['required_version']), /^>= 1\.\d+/);
    for (const name of Object.keys(child(config, 'variable'))) {
      const v = variable(name);
      assert.ok(typeof v['description'] === 'string' && v['description'].length > 10, `var.${name} has a description`);
      assert.ok(typeof v['type'] === 'string', `var.${name} has a type`);
    }
    const outputs = child(config, 'output');
    for (const name of Object.keys(outputs)) {
      assert.ok(typeof one(outputs, name)['description'] === 'string', `output ${name} has a description`);
    }
  });

  it('has a write and a read target group with role-aware health checks and no stickiness', () => {
    const groups = resources('aws_lb_target_group');
    assert.deepEqual([...groups.keys()].sort(), ['read', 'write']);
    assert.equal(resolveNumber(variable('max_replica_lag_ms')['default']), 5000);
    assert.equal(resolveNumber(variable('api_port')['default']), 8080);
    const paths: Record<string, string> = {
      write: '/health/master',
      read: `/health/replica?max_lag_ms=${ref('var.max_replica_lag_ms')}`,
    };
    for (const [name, g] of groups) {
      assert.equal(g['port'], ref('var.api_port'), `${name}: the API port`);
      assert.equal(g['protocol'], 'HTTP');
      const hc = one(g, 'health_check');
      assert.equal(hc['path'], paths[name], `${name}: health-check path`);
      assert.equal(hc['matcher'], '200', `${name}: only 200 is healthy`);
      assert.equal(hc['interval'], 5);
      assert.equal(hc['healthy_threshold'], 2);
      assert.equal(hc['unhealthy_threshold'], 2);
      const timeout = hc['timeout'];
      assert.ok(typeof timeout === 'number' && timeout >= 2 && timeout <= 4, `${name}: timeout 2-4 s`);
      assert.ok(resolveNumber(g['deregistration_delay']) <= 15, `${name}: a demoted or replaced node drains fast`);
      assert.equal(one(g, 'stickiness')['enabled'], false, `${name}: stickiness off`);
    }
  });

  it('sends non-GET methods to the write group, /internal/* to a 404 and everything else to the read share', () => {
    assert.equal(local('https'), ref('var.certificate_arn != null'));
    assert.equal(local('api_listener_arn'), ref('local.https ? aws_lb_listener.https[0].arn : aws_lb_listener.http.arn'));
    const rules = [...resources('aws_lb_listener_rule').values()].sort((a, b) => Number(a['priority']) - Number(b['priority']));
    assert.equal(new Set(rules.map((r) => r['priority'])).size, rules.length, 'rule priorities are distinct');
    for (const r of rules) {
      assert.equal(r['listener_arn'], ref('local.api_listener_arn'), 'every rule is on the listener that carries the API');
      let perRule = 0;
      for (const c of blocks(r, 'condition')) {
        for (const key of Object.keys(c)) {
          const n = strings(one(c, key)['values']).length;
          assert.ok(n <= 3, 'AWS takes at most three values per condition');
          perRule += n;
        }
      }
      assert.ok(perRule <= 5, 'AWS takes at most five values per rule');
    }

    const http = one(resource('aws_lb_listener', 'http'), 'default_action');
    assert.equal(http['type'], ref('local.https ? "redirect" : "forward"'));
    const dyn = child(http, 'dynamic');
    assert.equal(one(dyn, 'redirect')['for_each'], ref('local.https ? [1] : []'));
    assert.equal(one(one(dyn, 'redirect'), 'content')['protocol'], 'HTTPS');
    assert.equal(one(dyn, 'forward')['for_each'], ref('local.https ? [] : [1]'));
    const https = resource('aws_lb_listener', 'https');
    assert.equal(https['count'], ref('local.https ? 1 : 0'));
    const httpsDefault = one(https, 'default_action');
    assert.equal(httpsDefault['type'], 'forward');
    const defaultForward = one(httpsDefault, 'forward');
    assert.deepEqual(one(one(dyn, 'forward'), 'content'), defaultForward, 'HTTP without a certificate routes as HTTPS does');

    type Target = { fixed: string } | { forward: Record<string, Json> };
    const forwardOf = (f: Block): Target => {
      assert.equal(one(f, 'stickiness')['enabled'], false, 'no stickiness between target groups');
      return { forward: Object.fromEntries(blocks(f, 'target_group').map((g) => [String(g['arn']), g['weight']!])) };
    };
    const target = (action: Block): Target => {
      if (action['type'] === 'fixed-response') return { fixed: String(one(action, 'fixed_response')['status_code']) };
      assert.equal(action['type'], 'forward');
      if (typeof action['target_group_arn'] === 'string') return { forward: { [action['target_group_arn']]: 1 } };
      return forwardOf(one(action, 'forward'));
    };
    // ALB path patterns: * is any run of characters, ? one character, case-sensitive.
    const glob = (p: string): RegExp => new RegExp(`^${p.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.')}$`);
    const matches = (c: Block, method: string, p: string): boolean => {
      const [key, ...rest] = Object.keys(c);
      assert.equal(rest.length, 0, 'one condition type per condition block');
      const values = strings(one(c, key!)['values']);
      if (key === 'path_pattern') return values.some((v) => glob(v).test(p));
      if (key === 'http_request_method') return values.includes(method);
      assert.fail(`condition ${key} is not modelled by this test`);
    };
    const route = (method: string, p: string): Target => {
      const rule = rules.find((r) => blocks(r, 'condition').every((c) => matches(c, method, p)));
      return rule ? target(one(rule, 'action')) : forwardOf(defaultForward);
    };

    const reads = { forward: { [READ]: ref('local.read_weight'), [WRITE]: ref('local.write_weight') } };
    for (const m of ['POST', 'PUT', 'PATCH', 'DELETE']) {
      assert.deepEqual(route(m, '/api/v1/tenants'), { forward: { [WRITE]: 1 } }, `${m} goes to the master`);
      assert.deepEqual(route(m, '/cluster/switchover'), { forward: { [WRITE]: 1 } }, `${m} /cluster goes to the master`);
    }
    for (const m of ['GET', 'HEAD', 'OPTIONS']) {
      assert.deepEqual(route(m, '/api/v1/config/version'), reads, `${m} is a read`);
      assert.deepEqual(route(m, '/health'), reads, `${m} /health is a read`);
    }
    for (const m of ['GET', 'HEAD', 'POST', 'PUT', 'DELETE']) {
      assert.deepEqual(route(m, '/internal/v1/replication/stream'), { fixed: '404' }, `${m} /internal/* is not reachable`);
      assert.deepEqual(route(m, '/internal/v1/heartbeats'), { fixed: '404' });
    }
    assert.deepEqual(route('GET', '/metrics'), { fixed: '404' }, '/metrics has no authentication');
    assert.deepEqual(route('GET', '/api/v1/internal/x'), reads, 'only the /internal/ prefix is closed');

    // Every node in both groups: the health checks, not the membership, decide the roles.
    for (const g of ['write', 'read']) {
      const a = resource('aws_lb_target_group_attachment', g);
      assert.equal(a['for_each'], ref('aws_instance.server'));
      assert.equal(a['target_group_arn'], ref(`aws_lb_target_group.${g}.arn`));
      assert.equal(a['port'], ref('var.api_port'));
    }
    assert.equal(local('read_weight'), ref('local.node_count - 1'));
    assert.equal(local('write_weight'), ref('var.master_serves_reads || local.node_count == 1 ? 1 : 0'));
  });

  it('keeps ALB connections idle long enough for a blocking poll (300 s + wait/16)', () => {
    const alb = resource('aws_lb', 'this');
    assert.equal(alb['load_balancer_type'], 'application');
    assert.equal(alb['internal'], ref('var.internal'));
    assert.ok(resolveNumber(alb['idle_timeout']) >= 330, 'idle_timeout default >= 330');
    const v = one(variable('idle_timeout'), 'validation');
    assert.match(String(v['condition']), /var\.idle_timeout >= 330/);
    assert.equal(alb['xff_header_processing_mode'], 'append', 'the server trusts the last X-Forwarded-For entry');
  });

  it('opens the API port only to the ALB and the servers, and the coordinator to no CIDR', () => {
    assert.equal(resources('aws_security_group_rule').size, 0, 'all rules are aws_vpc_security_group_*_rule');
    for (const [name, sg] of resources('aws_security_group')) {
      assert.equal(sg['ingress'], undefined, `${name}: no inline ingress`);
      assert.equal(sg['egress'], undefined, `${name}: no inline egress`);
    }
    const ingress = [...resources('aws_vpc_security_group_ingress_rule')];
    const apiPort = resolveNumber(variable('api_port')['default']);
    const covers = (r: Block, lo: number, hi: number, apiRef: boolean): boolean => {
      if (r['ip_protocol'] === '-1') return true;
      if (apiRef && r['from_port'] === ref('var.api_port')) return true;
      const from = r['from_port'];
      const to = r['to_port'];
      if (typeof from !== 'number' || typeof to !== 'number') return false;
      return from <= hi && to >= lo;
    };
    const noCidr = (name: string, r: Block): void => {
      for (const k of ['cidr_ipv4', 'cidr_ipv6', 'prefix_list_id']) assert.equal(r[k], undefined, `${name}: no ${k}`);
    };

    const api = ingress.filter(([, r]) => r['security_group_id'] === SG.server && covers(r, apiPort, apiPort, true));
    for (const [name, r] of api) {
      assert.ok([SG.alb, SG.server].includes(String(r['referenced_security_group_id'])), `${name}: from the ALB or the servers`);
      assert.equal(r['to_port'], r['from_port'], `${name}: the API port alone`);
      noCidr(name, r);
    }
    assert.deepEqual(api.map(([, r]) => r['referenced_security_group_id']).sort(), [SG.alb, SG.server].sort());

    for (const [name, r] of ingress.filter(([, r]) => covers(r, 2379, 2380, false))) {
      assert.equal(r['security_group_id'], SG.coordinator, `${name}: etcd ports only on the coordinator group`);
      assert.ok([SG.server, SG.coordinator].includes(String(r['referenced_security_group_id'])), `${name}: from a security group`);
      noCidr(name, r);
    }
    const etcdClient = resource('aws_vpc_security_group_ingress_rule', 'coordinator_client_from_servers');
    assert.deepEqual([etcdClient['from_port'], etcdClient['to_port'], etcdClient['referenced_security_group_id']], [2379, 2379, SG.server]);

    for (const [name, r] of ingress.filter(([, r]) => r['security_group_id'] === SG.alb)) {
      assert.ok([80, 443].includes(Number(r['from_port'])) && r['to_port'] === r['from_port'], `${name}: 80 or 443`);
      assert.equal(r['cidr_ipv4'], ref('each.value'));
      assert.match(String(r['for_each']), /var\.allowed_cidrs/, `${name}: from allowed_cidrs`);
    }
    for (const [name, r] of ingress) {
      assert.notEqual(r['cidr_ipv4'], '0.0.0.0/0', `${name}: nothing is opened to the world by the module itself`);
    }
    const albOut = resource('aws_vpc_security_group_egress_rule', 'alb_to_servers');
    assert.deepEqual([albOut['security_group_id'], albOut['referenced_security_group_id'], albOut['from_port']], [SG.alb, SG.server, ref('var.api_port')]);
  });

  it('lets the servers read their own secrets and nothing else', () => {
    const doc = dataSource('aws_iam_policy_document', 'read_secrets');
    const st = one(doc, 'statement');
    assert.deepEqual(st['actions'], ['secretsmanager:GetSecretValue']);
    assert.equal(st['resources'], ref('local.secret_arns'));
    const arns = String(local('secret_arns'));
    for (const v of ['var.replication_secret_arn', 'var.hmac_secret_arn', 'var.admin_token_secret_arn']) assert.ok(arns.includes(v), v);
    const kms = one(child(doc, 'dynamic'), 'statement');
    assert.deepEqual(one(kms, 'content')['actions'], ['kms:Decrypt']);
    assert.equal(one(one(kms, 'content'), 'condition')['variable'], 'kms:ViaService');
    assert.doesNotMatch(JSON.stringify(config['data']), /"\*"/, 'no wildcard action or resource');
    const lt = resource('aws_launch_template', 'server');
    assert.equal(one(lt, 'metadata_options')['http_tokens'], 'required', 'IMDSv2 only');
  });

  describe('the user-data', () => {
    const sample: Record<string, string> = {
      node_id: 'nebulagc-b',
      region: 'eu-west-1',
      api_port: '8080',
      etcd_endpoints: 'http://10.0.1.10:2379,http://10.0.2.10:2379',
      cluster_name: 'nebulagc',
      max_replica_lag_ms: '5000',
      replica_writes: 'proxy',
      keepalive_timeout_ms: '335000',
      replication_secret_arn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:repl-AbCdEf',
      hmac_secret_arn: 'arn:aws:secretsmanager:eu-west-1:123456789012:secret:hmac-AbCdEf',
      admin_token_secret_arn: '',
      release_url: 'https://releases.example.net/nebulagc-0.1.0.tar.gz',
      release_sha256: '',
      node_version: '20.20.2',
      extra_env: 'NEBULAGC_SYNC_REPLICAS=1\nNEBULAGC_LOG_LEVEL=debug',
    };
    const placeholders = (): string[] => [...template.matchAll(/(?<!\$)\$\{([^}]*)\}/g)].map((m) => m[1]!);
    // What templatefile() does with a template that has interpolations only.
    const render = (vars: Record<string, string>): string =>
      template.replace(/(?<!\$)\$\{([^}]*)\}/g, (_, name: string) => {
        assert.ok(name in vars, `a value for \${${name}}`);
        return vars[name]!;
      }).replace(/\$\$\{/g, '${');

    it('gets every placeholder it uses from the instance, and nothing secret', () => {
      assert.equal(local('user_data_template'), `${ref('path.module')}/user-data.sh.tftpl`);
      const inst = resource('aws_instance', 'server');
      assert.equal(inst['for_each'], ref('var.nodes'));
      assert.equal(inst['user_data'], ref('templatefile(local.user_data_template, merge(local.user_data_vars, { node_id = each.key }))'));
      const vars = local('user_data_vars');
      assert.ok(isBlock(vars));
      assert.doesNotMatch(template, /%\{/, 'no template directives: the raw template is bash too');
      assert.deepEqual([...new Set(placeholders())].sort(), [...Object.keys(vars), 'node_id'].sort());
      assert.deepEqual(Object.keys(sample).sort(), [...Object.keys(vars), 'node_id'].sort());
      for (const name of Object.keys(vars).filter((k) => /secret|token/.test(k))) {
        assert.match(name, /_arn$/, `${name}: only a secret's ARN goes into user-data`);
      }
    });

    it('renders to a script bash accepts', () => {
      for (const script of [template, render(sample)]) {
        const file = path.join(tmp, 'user-data.sh');
        writeFileSync(file, script);
        const r = spawnSync('bash', ['-n', file], { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
      }
    });

    it('installs the release and the unit, fetches the secrets at boot and starts the server', () => {
      const s = render(sample);
      assert.match(s, /^#!\/bin\/bash\n/);
      assert.match(s, /^set -euo pipefail$/m);
      assert.match(s, /aws secretsmanager get-secret-value --region "\$REGION" --secret-id "\$1"/);
      assert.match(s, /replication_secret=\$\(secret "\$REPLICATION_SECRET_ARN"\)/);
      assert.match(s, /hmac_secret=\$\(secret "\$HMAC_SECRET_ARN"\)/);
      assert.match(s, /latest\/api\/token/, 'IMDSv2 session token');
      assert.match(s, /private_ip=\$\(curl [^\n]*latest\/meta-data\/local-ipv4\)/);
      assert.match(s, /https:\/\/nodejs\.org\/dist\/v\$NODE_VERSION\/SHASUMS256\.txt/);
      assert.match(s, /sha256sum -c/);
      assert.match(s, /install -m 0644 "\$APP_DIR\/ops\/systemd\/\$UNIT" "\/etc\/systemd\/system\/\$UNIT"/);
      assert.match(s, /^UNIT=nebulagc-server\.service$/m);
      assert.match(s, /^systemctl enable --now --no-block "\$UNIT"$/m);
    });

    it('agrees with ops/systemd/nebulagc-server.service on paths, user and state directory', () => {
      const s = render(sample);
      const constant = (name: string): string => {
        const m = new RegExp(`^${name}=(\\S+)$`, 'm').exec(s);
        assert.ok(m, `the script sets ${name}`);
        return m[1]!;
      };
      const unit = new Map<string, string[]>();
      for (const line of readFileSync(path.join(moduleDir, '..', 'ops', 'systemd', constant('UNIT')), 'utf8').split('\n')) {
        const m = /^([A-Za-z]+)=(.*)$/.exec(line);
        if (m) unit.set(m[1]!, [...(unit.get(m[1]!) ?? []), m[2]!]);
      }
      assert.deepEqual(unit.get('EnvironmentFile'), [constant('ENV_FILE')]);
      assert.match(s, /^ln -sf "\$APP_DIR\/dist\/server\/src\/cli\/main\.js" \/usr\/bin\/nebulagc-server$/m);
      assert.deepEqual(unit.get('ExecStart'), ['/usr/bin/nebulagc-server serve']);
      assert.deepEqual(unit.get('User'), [constant('SERVICE_USER')]);
      assert.deepEqual(unit.get('StateDirectory'), [path.basename(constant('STATE_DIR'))]);
      assert.equal(path.dirname(constant('STATE_DIR')), '/var/lib');
      assert.match(s, /install -m 0755 "\$APP_DIR\/ops\/systemd\/\$WAIT_READY" "\/usr\/lib\/nebulagc\/\$WAIT_READY"/);
      assert.deepEqual(unit.get('ExecStartPost'), [`/usr/lib/nebulagc/${constant('WAIT_READY')}`]);
    });

    it('writes /etc/nebulagc/server.env with mode 0600 before any secret, with the auto-mode settings', () => {
      const s = render(sample);
      assert.match(s, /^ENV_FILE=\/etc\/nebulagc\/server\.env$/m);
      const create = s.indexOf('install -m 0600 -o root -g root /dev/null "$ENV_FILE"');
      assert.ok(create > 0, 'the env file is created empty with mode 0600');
      const firstWrite = s.indexOf('>>"$ENV_FILE"');
      assert.ok(firstWrite > create, 'and only then written');
      assert.equal((s.match(/>\s*"\$ENV_FILE"/g) ?? []).length, (s.match(/>>"\$ENV_FILE"/g) ?? []).length, 'only appends, never a truncating >');

      // Expand the env file's heredocs as bash would at boot, with this node's values.
      const assignments = s.split('\n').filter((l) => /^[A-Z0-9_]+=('[^']*'|[^\s'"$]+)$/.test(l));
      const bodies = [...s.matchAll(/>>"\$ENV_FILE" <<(EOF|'EXTRA_ENV')\n([\s\S]*?)\n(?:EOF|EXTRA_ENV)\n/g)];
      assert.equal(bodies.length, 2, 'the settings heredoc and the extra_env heredoc');
      const secretValue = 'r'.repeat(40);
      const script = [
        ...assignments,
        'private_ip=10.0.2.15',
        `replication_secret=${secretValue}`,
        `hmac_secret=${'h'.repeat(40)}`,
        ...bodies.map((b) => `cat <<${b[1]}\n${b[2]}\n${b[1] === 'EOF' ? 'EOF' : 'EXTRA_ENV'}`),
      ].join('\n');
      const r: SpawnSyncReturns<string> = spawnSync('bash', ['-c', script], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      const env = new Map(
        r.stdout
          .split('\n')
          .filter((l) => l !== '' && !l.startsWith('#'))
          .map((l) => {
            assert.match(l, /^NEBULAGC_[A-Z0-9_]+=\S+$/, `an env line systemd reads as is: ${l}`);
            const i = l.indexOf('=');
            return [l.slice(0, i), l.slice(i + 1)] as const;
          }),
      );
      assert.deepEqual(Object.fromEntries(env), {
        NEBULAGC_NODE_ID: 'nebulagc-b',
        NEBULAGC_LISTEN: '0.0.0.0:8080',
        NEBULAGC_ADVERTISE_URL: 'http://10.0.2.15:8080',
        NEBULAGC_DB_PATH: '/var/lib/nebulagc-server/nebulagc.db',
        NEBULAGC_HA_MODE: 'auto',
        NEBULAGC_COORDINATOR: 'etcd',
        NEBULAGC_ETCD_ENDPOINTS: 'http://10.0.1.10:2379,http://10.0.2.10:2379',
        NEBULAGC_CLUSTER_NAME: 'nebulagc',
        NEBULAGC_MAX_REPLICA_LAG_MS: '5000',
        NEBULAGC_REPLICA_WRITES: 'proxy',
        NEBULAGC_TRUST_PROXY: 'true',
        NEBULAGC_KEEPALIVE_TIMEOUT_MS: '335000',
        NEBULAGC_REPLICATION_SECRET: secretValue,
        NEBULAGC_HMAC_SECRET: 'h'.repeat(40),
        NEBULAGC_SYNC_REPLICAS: '1',
        NEBULAGC_LOG_LEVEL: 'debug',
      });
    });
  });

  describe('with a local copy of the AWS provider', () => {
    const mirror = process.env['NEBULAGC_TF_PROVIDER_MIRROR'] ?? '/opt/tf-plugins';
    const skip = existsSync(path.join(mirror, 'registry.terraform.io', 'hashicorp', 'aws'))
      ? false
      : `no AWS provider at ${mirror} (set NEBULAGC_TF_PROVIDER_MIRROR); the registry cannot be reached from here`;

    it('validates and plans offline, with the values the checks above expect', { skip }, () => {
      const dir = path.join(tmp, 'root');
      mkdirSync(dir);
      const cli = path.join(tmp, 'cli.tfrc');
      writeFileSync(
        cli,
        `provider_installation {\n  filesystem_mirror {\n    path    = ${JSON.stringify(mirror)}\n    include = ["registry.terraform.io/hashicorp/aws"]\n  }\n}\n`,
      );
      const common = `
  source                 = ${JSON.stringify(moduleDir)}
  vpc_id                 = "vpc-0123456789abcdef0"
  alb_subnet_ids         = ["subnet-a", "subnet-b"]
  allowed_cidrs          = ["0.0.0.0/0"]
  nodes                  = { "cp-a" = "subnet-a", "cp-b" = "subnet-b", "cp-c" = "subnet-c" }
  ami_id                 = "ami-0123456789abcdef0"
  release_url            = "https://releases.example.net/nebulagc-0.1.0.tar.gz"
  etcd_endpoints         = ["http://10.0.1.10:2379"]
  replication_secret_arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:repl-AbCdEf"
  hmac_secret_arn        = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:hmac-AbCdEf"`;
      const root = `
provider "aws" {
  region                      = "eu-west-1"
  access_key                  = "AKIAIOSFODNN7EXAMPLE"
  secret_key                  = "not-a-real-key"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_region_validation      = true
}
module "plain" {${common}
}
module "tls" {${common}
  name                = "nebulagc-tls"
  certificate_arn     = "arn:aws:acm:eu-west-1:123456789012:certificate/0000"
  master_serves_reads = false
  secrets_kms_key_arn = "arn:aws:kms:eu-west-1:123456789012:key/0000"
}
`;
      writeFileSync(path.join(dir, 'main.tf'), root);
      const env = { ...process.env, TF_CLI_CONFIG_FILE: cli, TF_IN_AUTOMATION: '1', TF_INPUT: '0', CHECKPOINT_DISABLE: '1', AWS_EC2_METADATA_DISABLED: 'true' };
      const tf = (...args: string[]): string => {
        const r = spawnSync('terraform', [...args, '-no-color'], { cwd: dir, env, encoding: 'utf8', timeout: 180_000 });
        assert.equal(r.status, 0, `terraform ${args[0]}:\n${r.stdout}\n${r.stderr}`);
        return r.stdout;
      };
      tf('init', '-input=false', '-backend=false');
      tf('validate');
      tf('plan', '-input=false', '-refresh=false', '-lock=false', '-out=plan.bin');
      const plan = JSON.parse(tf('show', '-json', 'plan.bin')) as { planned_values: { root_module: PlannedModule } };
      const planned = new Map<string, Record<string, unknown>>();
      const walk = (m: PlannedModule): void => {
        for (const r of m.resources ?? []) planned.set(r.address, r.values);
        for (const c of m.child_modules ?? []) walk(c);
      };
      walk(plan.planned_values.root_module);
      const at = (address: string): Record<string, unknown> => {
        const v = planned.get(address);
        assert.ok(v, `${address} is planned`);
        return v;
      };
      const first = (v: unknown): Record<string, unknown> => {
        assert.ok(Array.isArray(v) && v.length === 1, 'one block');
        return v[0] as Record<string, unknown>;
      };
      const weights = (listener: Record<string, unknown>): number[] =>
        (first(first(listener['default_action'])['forward'])['target_group'] as { weight: number }[]).map((g) => g.weight).sort();

      for (const m of ['plain', 'tls']) {
        assert.equal(first(at(`module.${m}.aws_lb_target_group.write`)['health_check'])['path'], '/health/master');
        assert.equal(first(at(`module.${m}.aws_lb_target_group.read`)['health_check'])['path'], '/health/replica?max_lag_ms=5000');
        assert.equal(at(`module.${m}.aws_lb.this`)['idle_timeout'], 330);
        for (const id of ['cp-a', 'cp-b', 'cp-c']) {
          at(`module.${m}.aws_lb_target_group_attachment.write["${id}"]`);
          at(`module.${m}.aws_lb_target_group_attachment.read["${id}"]`);
        }
      }
      // Three nodes: two replicas share the read group, the master gets one share or none.
      assert.deepEqual(weights(at('module.plain.aws_lb_listener.http')), [1, 2]);
      assert.equal(planned.has('module.plain.aws_lb_listener.https[0]'), false);
      assert.equal(first(at('module.tls.aws_lb_listener.http')['default_action'])['type'], 'redirect');
      assert.deepEqual(weights(at('module.tls.aws_lb_listener.https[0]')), [0, 2]);
      assert.equal(planned.has('module.tls.aws_vpc_security_group_ingress_rule.alb_https["0.0.0.0/0"]'), true);
      assert.equal(planned.has('module.plain.aws_vpc_security_group_ingress_rule.alb_https["0.0.0.0/0"]'), false);
    });
  });
});

interface PlannedModule {
  resources?: { address: string; values: Record<string, unknown> }[];
  child_modules?: PlannedModule[];
}
