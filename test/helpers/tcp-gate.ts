import net from 'node:net';

/**
 * A plain TCP forwarder on 127.0.0.1:0 that a test can turn into a partition: `blackhole()`
 * keeps every connection open but drops every byte both ways, and accepts new ones that go
 * nowhere, as a network that loses packets does (no RST, so clients find out only by their
 * timeouts). `heal()` closes what was cut, so clients reconnect, and forwards again.
 */
export class TcpGate {
  private readonly conns = new Set<net.Socket>();
  private dropping = false;

  private constructor(
    private readonly server: net.Server,
    readonly port: number,
  ) {}

  static async open(targetPort: number, targetHost = '127.0.0.1'): Promise<TcpGate> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const gate = new TcpGate(server, (server.address() as net.AddressInfo).port);
    server.on('connection', (client) => gate.accept(client, targetPort, targetHost));
    return gate;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get cut(): boolean {
    return this.dropping;
  }

  blackhole(): void {
    this.dropping = true;
  }

  heal(): void {
    this.dropping = false;
    for (const s of this.conns) s.destroy();
    this.conns.clear();
  }

  async close(): Promise<void> {
    for (const s of this.conns) s.destroy();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(client: net.Socket, port: number, host: string): void {
    this.conns.add(client);
    client.on('error', () => undefined);
    client.on('close', () => this.conns.delete(client));
    if (this.dropping) return void client.resume();
    const upstream = net.connect(port, host);
    this.conns.add(upstream);
    upstream.on('error', () => client.destroy());
    upstream.on('close', () => {
      this.conns.delete(upstream);
      client.destroy();
    });
    client.on('close', () => upstream.destroy());
    client.on('data', (b) => {
      if (!this.dropping) upstream.write(b);
    });
    upstream.on('data', (b) => {
      if (!this.dropping) client.write(b);
    });
  }
}
